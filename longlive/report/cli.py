"""`longlive report RESULTS... --out reports/NAME`: the command-line face of `build_report`.

`longlive report convert-bench SRC... --out results/legacy/results.jsonl [--force]` converts, once, files of the
retired `python -m longlive.bench.*` scripts (and old `longlive generate` result.json files) into a results store in
the runner's schema (longlive.report.legacy); SRC may be files or folders (searched for such files). Then
`longlive report results/legacy --out reports/NAME` renders them.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from pathlib import Path

from longlive.output import OutputWriteError
from longlive.report.build import build_report
from longlive.report.legacy import CONVERT_WORD as CONVERT
from longlive.report.legacy import EXPERIMENT_PREFIX, write_converted
from longlive.runner.executor import sigterm_interrupts


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path,
                   help="results.jsonl / results.parquet files, or folders holding results.jsonl; or "
                        f"'{CONVERT} SRC...': convert legacy bench result files (or folders of them)")
    p.add_argument("--out", type=Path, required=True,
                   help=f"report folder (index.md, index.html, assets/); with {CONVERT}: the results.jsonl to write")
    p.add_argument("--title", default=None, help="report title (default: names the results)")
    p.add_argument("--force", action="store_true", help=f"{CONVERT}: replace an existing --out file")


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `report` subcommand on the main CLI; its handler is `cmd_report`."""
    p = subparsers.add_parser("report", help="Markdown + HTML report of result stores, next to the paper's numbers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    """Build the report (or convert legacy files); a missing or unreadable input is a one-line error and exit
    status 2, not a traceback."""
    try:
        with sigterm_interrupts():  # SIGTERM, like Ctrl-C, leaves the previous report whole and no temp files
            if str(args.results[0]) == CONVERT:
                return _convert(args)
            if args.force:
                raise ValueError(f"--force belongs to '{CONVERT}' (a report folder is always rebuilt in place)")
            index = build_report(args.results, args.out, title=args.title)
    except (FileNotFoundError, NotADirectoryError, ValueError, OutputWriteError) as exc:
        print(f"longlive report: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"longlive report: {str(exc) or 'interrupted (Ctrl-C)'}; the previous report, if any, is unchanged: "
              f"rerun to build it", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    print(index)
    return 0


def _convert(args: argparse.Namespace) -> int:
    sources = args.results[1:]
    if not sources:
        raise ValueError(f"{CONVERT}: give the legacy result files or folders to convert")
    if args.title is not None:
        raise ValueError(f"--title belongs to reports; {CONVERT} writes a results file")
    out, rows, files = write_converted(sources, args.out, force=args.force)
    per = Counter(r["experiment"].removeprefix(EXPERIMENT_PREFIX) for r in rows)
    print(f"wrote {len(rows)} rows ({', '.join(f'{k} {n}' for k, n in per.items())}) from {len(files)} files to "
          f"{out}; render them with: longlive report {out} --out reports/NAME")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m longlive.report RESULTS... --out DIR`)."""
    p = argparse.ArgumentParser(prog="longlive report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    return cmd_report(p.parse_args(argv))
