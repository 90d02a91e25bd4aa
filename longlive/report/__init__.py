"""Reports of result stores: tables, plots, the paper's numbers side by side (Markdown + HTML).

Public API: `load_results`, `build_report`, and for the CLI `add_report_parser` / `cmd_report` / `main`.
"""

from __future__ import annotations

from longlive.report.build import build_report
from longlive.report.cli import add_report_parser, cmd_report, main
from longlive.report.load import load_results

__all__ = ["add_report_parser", "build_report", "cmd_report", "load_results", "main"]
