"""Reports of result stores: tables, plots, the paper's numbers side by side (Markdown + HTML).

Public API: `load_results`, `build_report`, and for the CLI `add_report_parser` / `cmd_report` / `main`.
Imports are lazy so `longlive --help` does not pay for pandas and matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_report_parser", "build_report", "cmd_report", "load_results", "main"]


def __getattr__(name: str) -> Any:
    if name == "load_results":
        from longlive.report.load import load_results

        return load_results
    if name == "build_report":
        from longlive.report.build import build_report

        return build_report
    if name in ("add_report_parser", "cmd_report", "main"):
        from longlive.report import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'longlive.report' has no attribute {name!r}")
