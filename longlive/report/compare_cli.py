"""`longlive compare A B [C ...] [--out DIR]`: regression verdicts between result sets (longlive.report.regress).

A is the baseline, the last set the candidate. Each argument is a results folder (results.jsonl), a results.jsonl /
.parquet file, or a report folder holding one. Prints a Markdown summary; with --out also writes DIR/compare.md,
DIR/compare.html and, with more than two sets, DIR/trend.png (every set in order, one line per matched
configuration). Exit status: 0, or 1 when some metric regressed by more than --threshold, or 2 when the input cannot
be compared (no rows, no ok rows, no matching configuration, no metric in common).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from longlive.output import OutputWriteError, check_out_dir, write_text_atomic
from longlive.report.regress import (
    DEFAULT_NOISE,
    DEFAULT_THRESHOLD,
    compare_sets,
    context,
    html,
    load_set,
    markdown,
    unique_labels,
)
from longlive.report.trend import plot_trend, trend_table
from longlive.runner.executor import sigterm_interrupts


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (a fraction: 0.05 = 5 %)") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1 (0.05 = 5 %)")
    return v


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path,
                   help="result sets in order: baseline first, candidate last (folders with results.jsonl, "
                        "results.jsonl / .parquet files, or report folders holding one)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for compare.md, compare.html and (more than two sets) trend.png; default: print only")
    p.add_argument("--threshold", type=_fraction, default=DEFAULT_THRESHOLD,
                   help="exit 1 when some metric regressed by more than this fraction (default %(default)s)")
    p.add_argument("--noise", type=_fraction, default=DEFAULT_NOISE,
                   help="assumed run-to-run noise of a single run: a change within it is 'within noise' "
                        "(default %(default)s; repeated rows use their intervals instead)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metric columns to compare (default: every metric of the row schema and the "
                        "quality-metric registry that both rows hold)")


def add_compare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `compare` subcommand on the main CLI; its handler is `cmd_compare`."""
    p = subparsers.add_parser("compare", help="regression verdicts between result sets (baseline first, candidate "
                                              "last), Markdown + HTML, trend plot over several sets",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_args(p)
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare; unusable input is a one-line error and exit status 2, a regression beyond the threshold exit 1."""
    try:
        with sigterm_interrupts():
            return _compare(args)
    except (FileNotFoundError, NotADirectoryError, ValueError, OutputWriteError) as exc:
        print(f"longlive compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"longlive compare: {str(exc) or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)


def _compare(args: argparse.Namespace) -> int:
    if len(args.results) < 2:
        raise ValueError("give at least two result sets: the baseline A, then the candidate B (more: a trend)")
    metrics = None
    if args.metrics is not None:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        if not metrics:
            raise ValueError("--metrics: give metric names separated by commas, e.g. --metrics denoise_fps,e2e_fps")
    if args.out is not None:
        check_out_dir(args.out)
    sets = [load_set(p) for p in args.results]
    unique_labels(sets)
    cmp = compare_sets(sets[0], sets[-1], metrics, noise=args.noise, threshold=args.threshold)
    trend, note = None, None
    if len(sets) > 2:
        if args.out is None:
            note = "trend plot over the sets: give --out DIR to write trend.png"
        else:
            table, note = trend_table(sets, cmp)
            if table.empty:
                note = "no finite number to plot over the sets"
            else:
                plot_trend(table, [s.label for s in sets], args.out / "trend.png")
                trend = "trend.png"
    ctx = context(cmp, trend, note or None)
    text = markdown(ctx)
    print(text, end="")
    if args.out is not None:
        written = [write_text_atomic(args.out / "compare.md", text),
                   write_text_atomic(args.out / "compare.html", html(ctx))]
        if trend:
            written.append(args.out / trend)
        print(f"longlive compare: wrote {', '.join(str(w) for w in written)}", file=sys.stderr)
    return cmp.exit_code
