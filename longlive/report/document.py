"""The report as data, and its two renderings.

A report is a list of `Section`s of blocks (paragraphs, notes, bullets, tables, figures, details, the headline);
`Doc` collects them and formats every table cell (`fmt_cell`). The same sections are rendered to Markdown here
(`render_markdown`) and to HTML by the Jinja2 templates in templates/ (`TEMPLATES`), so index.md and index.html always
say the same thing. It knows neither which sections a report has nor which rows they show: build.py and
summary.py fill a `Doc`.
"""

from __future__ import annotations

import html
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from longlive.report.compare import is_missing
from longlive.report.plots import num, text

PERCENT_COLUMNS = ("fraction_of_ceiling", "mfu")
INT_COLUMNS = ("sp", "dp", "steps", "frames", "seed", "latents", "video_s", "cells", "ok", "failed", "skipped", "total",
               "pairs", "repeats")
WRAP_COLUMNS = ("reason", "note", "definition", "release run", "paper row", "setting", "gate_reason")
MAX_REASON = 400
INTERVAL_MARK = "[lo–hi]"
"""Marks a column header whose numbers carry their interval over repeats ('27.2 [26.9–27.5]')."""
TEMPLATES = Environment(loader=PackageLoader("longlive.report", "templates"), autoescape=True,
                        undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False)
"""The report's Jinja2 templates (package data: longlive/report/templates/*.j2, report.css)."""


# --- the report as data: sections of blocks, rendered by the templates (HTML) and `render_markdown` ---------------

@dataclass
class Para:
    text: str
    cls: str | None = None
    kind: ClassVar[str] = "para"


@dataclass
class Note:
    text: str
    kind: ClassVar[str] = "note"


@dataclass
class Bullets:
    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass
class Th:
    """A column header: `mark` is shown after the name (e.g. INTERVAL_MARK), `note` as its tooltip."""

    text: str
    numeric: bool = False
    mark: str = ""
    note: str = ""


@dataclass
class Td:
    text: str
    cls: str = ""


@dataclass
class Table:
    header: list[Th]
    rows: list[list[Td]]
    html_id: str | None = None
    kind: ClassVar[str] = "table"


@dataclass
class FigureBlock:
    """A published PNG with what the figure holds (series per axes, point labels, Pareto-front points), also
    written as data-* attributes so a test can check the page without decoding images."""

    key: str
    src: str
    alt: str
    caption: str = ""
    series: list[int] = field(default_factory=list)
    labels: int = 0
    front: int = 0
    kind: ClassVar[str] = "figure"


@dataclass
class Details:
    summary: str
    body: str
    kind: ClassVar[str] = "details"


@dataclass
class HeadItem:
    label: str
    text: str
    cls: str = ""


@dataclass
class Headline:
    """The first thing on the page: the answers a reader looks for before any table."""

    items: list[HeadItem]
    html_id: str = "headline"
    kind: ClassVar[str] = "headline"


Block = Para | Note | Bullets | Table | FigureBlock | Details | Headline


@dataclass
class Section:
    """A heading with its blocks and sub-sections. `collapsed`: a one-line reason shown in place of the body, which
    the HTML folds into a <details> (the Markdown keeps it whole)."""

    title: str
    anchor: str
    level: int
    blocks: list[Block] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)
    collapsed: str = ""


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-") or "section"


def fmt_cell(col: str, v: Any, exact: bool = False) -> str:
    """Numbers readable at a glance: ratios as '0.83×', fractions as percent, ~3 significant digits.

    Published numbers (`exact`, or a '... paper' / '... release' column) keep the digits they were printed with.
    """
    if is_missing(v):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, numbers.Real):
        if "ours/" in col or col.startswith("×"):
            return f"{v:.2f}×"
        if col in PERCENT_COLUMNS:
            return f"{v:.0%}"
        if isinstance(v, numbers.Integral) or (col in INT_COLUMNS and float(v).is_integer()):
            return f"{int(v):,}" if abs(v) >= 10000 else str(int(v))
        if exact or col.endswith((" paper", " release")):
            return f"{float(v):.6g}"
        return num(float(v))
    s = text(v)
    return s if len(s) <= MAX_REASON else s[: MAX_REASON - 1] + "…"


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


class Doc:
    """Collects the report's sections and blocks; `render` gives the Markdown and the HTML of the same data."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.assets: set[str] = set()
        self._anchors: set[str] = set()

    def _anchor(self, title: str) -> str:
        base = anchor = _slug(title)
        k = 2
        while anchor in self._anchors:
            anchor, k = f"{base}-{k}", k + 1
        self._anchors.add(anchor)
        return anchor

    def heading(self, level: int, title: str, collapsed: str = "") -> None:
        """Start a section; a level-3 or deeper one nests in the last section of a lower level."""
        s = Section(title, self._anchor(title), level, collapsed=collapsed)
        if level <= 2 or not self.sections:
            self.sections.append(s)
            return
        parent = self.sections[-1]
        while parent.children and parent.children[-1].level < level:
            parent = parent.children[-1]
        parent.children.append(s)

    def add(self, block: Block) -> None:
        """Append to the innermost section opened last."""
        if not self.sections:
            self.heading(2, "Report")
        s = self.sections[-1]
        while s.children:
            s = s.children[-1]
        s.blocks.append(block)

    def para(self, s: str, cls: str | None = None) -> None:
        self.add(Para(s, cls))

    def note(self, s: str) -> None:
        self.add(Note(s))

    def bullets(self, items: list[str]) -> None:
        self.add(Bullets(list(items)))

    def table(self, df: pd.DataFrame, html_id: str | None = None, status_col: str | None = None,
              exact: bool = False, intervals: dict[str, list[tuple[float, float] | None]] | None = None,
              cell_cls: dict[str, list[str]] | None = None, rule: str | None = None) -> None:
        """A formatted table; numbers right-aligned in HTML, pipes escaped in Markdown. `intervals` (column ->
        per-row (lo, hi) or None) writes '27.2 [26.9–27.5]' and marks the header (its tooltip: `rule`);
        `cell_cls` (column -> per-row CSS class) flags cells, e.g. the speed of a row that fails its gate."""
        intervals, cell_cls = intervals or {}, cell_cls or {}
        header = [Th(str(c), _numeric(df[c]) or str(c) in intervals,
                     INTERVAL_MARK if str(c) in intervals else "",
                     (rule or "") if str(c) in intervals else "") for c in df.columns]
        rows = []
        for i, row in enumerate(df.itertuples(index=False, name=None)):
            cells = []
            for c, v in zip(df.columns, row, strict=True):
                col = str(c)
                s = fmt_cell(col, v, exact)
                span = intervals.get(col, [None] * (i + 1))[i]
                if span is not None:
                    s = f"{s} [{num(span[0])}–{num(span[1])}]"
                cls = "num" if header[len(cells)].numeric else "wrap" if col in WRAP_COLUMNS else ""
                if status_col and col == status_col:
                    cls = s
                extra = cell_cls.get(col, [""] * (i + 1))[i]
                cells.append(Td(s, f"{cls} {extra}".strip()))
            rows.append(cells)
        self.add(Table(header, rows, html_id))

    def image(self, src: str, alt: str, caption: str = "", key: str = "", series: list[int] | None = None,
              labels: int = 0, front: int = 0) -> None:
        self.assets.add(Path(src).name)
        self.add(FigureBlock(key or Path(src).stem, src, alt, caption, list(series or []), labels, front))

    def details(self, summary: str, body: str) -> None:
        self.add(Details(summary, body))

    def headline(self, items: list[HeadItem]) -> None:
        self.add(Headline(items))

    def render(self, title: str) -> tuple[str, str]:
        """(index.md, index.html) of the collected sections."""
        page = TEMPLATES.get_template("report.html.j2").render(title=title, sections=self.sections)
        return render_markdown(title, self.sections), page


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _block_md(b: Block) -> list[str]:
    """A block as Markdown lines (joined by newlines; each block ends with a blank line)."""
    if isinstance(b, Para):
        return [b.text + "\n"]
    if isinstance(b, Note):
        return [f"> {b.text}\n"]
    if isinstance(b, Bullets):
        return ["\n".join(f"- {i}" for i in b.items) + "\n"]
    if isinstance(b, Headline):
        return ["\n".join(f"- **{i.label}**: {i.text}" for i in b.items) + "\n"]
    if isinstance(b, Table):
        head = [_md_cell(h.text + (f" {h.mark}" if h.mark else "")) for h in b.header]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if h.numeric else "---" for h in b.header) + "|"]
        lines += ["| " + " | ".join(_md_cell(c.text) for c in row) + " |" for row in b.rows]
        return [*lines, ""]
    if isinstance(b, FigureBlock):
        return [f"![{b.alt}]({b.src})\n" + (f"\n*{b.caption}*\n" if b.caption else "")]
    if isinstance(b, Details):
        return [f"<details><summary>{html.escape(b.summary)}</summary>\n\n```json\n{b.body}\n```\n\n</details>\n"]
    raise TypeError(f"unknown report block {type(b).__name__}")


def render_markdown(title: str, sections: list[Section]) -> str:
    """index.md: the title, a table of contents of the level-2 sections, then every section's blocks."""
    toc = "\n".join(f"- [{s.title}](#{s.anchor})" for s in sections)
    lines: list[str] = []

    def walk(s: Section) -> None:
        lines.append(f"{'#' * s.level} {s.title}\n")
        if s.collapsed:
            lines.append(f"*{s.collapsed}*\n")
        for b in s.blocks:
            lines.extend(_block_md(b))
        for c in s.children:
            walk(c)

    for s in sections:
        walk(s)
    return f"# {title}\n\n{toc}\n\n" + "\n".join(lines) + "\n"
