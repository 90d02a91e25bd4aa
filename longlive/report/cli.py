"""`longlive report RESULTS... --out reports/NAME`: the command-line face of `build_report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longlive.report.build import build_report


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path,
                   help="results.jsonl / results.parquet files, or folders holding results.jsonl")
    p.add_argument("--out", type=Path, required=True, help="report folder (index.md, index.html, assets/)")
    p.add_argument("--title", default=None, help="report title (default: names the results)")


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `report` subcommand on the main CLI; its handler is `cmd_report`."""
    p = subparsers.add_parser("report", help="Markdown + HTML report of result stores, next to the paper's numbers",
                              description=__doc__)
    _add_args(p)
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report; a missing or unreadable store is a one-line error and exit status 2, not a traceback."""
    try:
        index = build_report(args.results, args.out, title=args.title)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        print(f"longlive report: error: {exc}", file=sys.stderr)
        return 2
    print(index)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m longlive.report RESULTS... --out DIR`)."""
    p = argparse.ArgumentParser(prog="longlive report", description=__doc__)
    _add_args(p)
    return cmd_report(p.parse_args(argv))
