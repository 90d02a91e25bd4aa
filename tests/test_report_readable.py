"""The report a newcomer reads (issue 22, item 5): the summary leads (the fastest configuration that passes its gate,
how each axis moves speed, memory and quality), plots are faceted by what varies (a bounded number of lines per
axes), Pareto plots label only their front, spreads sit next to every timed number, a fast row that fails its gate is
marked wherever its speed is shown, sections that cannot apply collapse to one line, and the page is rendered from
Jinja2 templates shipped with the package."""

from __future__ import annotations

import html as html_lib
import json
import re
from itertools import product
from pathlib import Path

import pandas as pd
import pytest
import tomllib
from PIL import Image, ImageStat

from longlive.report import build_report
from longlive.report import plots as plots_mod
from longlive.report.document import TEMPLATES
from longlive.report.plots import MAX_BARS, MAX_FACETS, MAX_LINES, facet
from longlive.report.summary import axis_effects
from longlive.runner.schema import empty_row

ROOT = Path(__file__).resolve().parents[1]
PRECISION = {"fp32": 1.0, "bf16": 1.5, "fp8-emulated": 0.8, "nvfp4": 2.0}
KV = {"none": 1.0, "nvfp4": 0.98}
STEPS = {4: 1.0, 2: 1.8}
SP = {1: 1.0, 2: 1.6}
FLICKER = {"fp32": 0.99, "bf16": 0.99, "fp8-emulated": 0.988, "nvfp4": 0.98}
GATE = {"name": "flicker", "reference": {"precision": "fp32", "kv_quant": "none", "decode": None, "sp": None},
        "checks": [{"metric": "temporal_flickering", "kind": "within", "value": 0.004}]}
"""nvfp4 Linears flicker 0.01 more than fp32: they fail; every other configuration passes."""
RULE = "repeats = 3 timed runs; [m_lo, m_hi] = min and max of the runs"


def _fps(precision: str, kv: str, steps: int, sp: int) -> float:
    return 100.0 * PRECISION[precision] * KV[kv] * STEPS[steps] * SP[sp]


def _row(precision: str, kv: str, steps: int, sp: int, *, gates: bool = True, repeats: bool = False) -> dict:
    """A smoke-shaped row of an experiment with no preset file, so the report judges it by the gates it carries."""
    axes = {"model": "tiny", "precision": precision, "kv_quant": kv, "decode": "streaming", "steps": steps, "sp": sp,
            "hardware": "cpu", "attn": "auto", "exchange": "none", "compile": "none"}
    cell = f"{precision}-{kv}-{steps}-{sp}"
    r = empty_row(cell, "smoke-like", "infer", axes, frames=16, seed=0)
    fps = _fps(precision, kv, steps, sp)
    r.update(status="ok", denoise_fps=fps, e2e_fps=fps * 0.8, chunk_ms_median=1e4 / fps, chunk_ms_p10=9e3 / fps,
             chunk_ms_p90=1.1e4 / fps, switch_latency_s=0.05, video_seconds=2.5,
             temporal_flickering=FLICKER[precision] - (0.001 if kv == "nvfp4" else 0.0))
    r["timing_definition"] = {"denoise_fps": "denoise loop", "switch_latency_s": "prompt switch to its first frame"}
    r["config"] = {"attn": "auto", "gates": [GATE] if gates else []}
    r["manifest"] = {"gpu": "cpu", "git_commit": "abc1234def5678", "packages": {"torch": "2.13.0"}}
    if repeats:
        runs = [fps * 0.99, fps, fps * 1.02]
        r.update(repeats=3, denoise_fps_lo=min(runs), denoise_fps_hi=max(runs), denoise_fps_repeats=runs)
        r["timing_definition"]["repeats"] = RULE
    return r


def smoke_rows(gates: bool = True, repeats: bool = False) -> list[dict]:
    """A smoke-shaped matrix: 4 precisions × 2 KV formats × 2 steps × 2 sp = 32 tiny CPU cells."""
    return [_row(p, k, s, n, gates=gates, repeats=repeats) for p, k, s, n in product(PRECISION, KV, STEPS, SP)]


def _write(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


FIGURES: dict[str, object] = {}
"""The matplotlib figures of the smoke-shaped report by file stem, kept by `smoke_report` as they are saved."""


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    root = tmp_path_factory.mktemp("readable")
    save = plots_mod._save
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots_mod, "_save", lambda fig, path: FIGURES.update({path.stem: fig}) or save(fig, path))
        index = build_report([_write(root / "run", smoke_rows(repeats=True))], root / "out", title="Smoke-shaped")
    return (root / "out" / "index.md").read_text(), index.read_text(), root / "out"


def _sections(md: str) -> dict[str, str]:
    return {part.split("\n", 1)[0].strip(): part for part in md.split("\n## ")[1:]}


def _figures(page: str) -> dict[str, list[dict]]:
    """data-* attributes of every <figure> by plot key."""
    out: dict[str, list[dict]] = {}
    for m in re.finditer(r'<figure data-plot="([^"]+)" data-series="([^"]*)" data-labels="(\d+)" data-front="(\d+)"',
                         page):
        out.setdefault(m[1], []).append({"series": [int(v) for v in m[2].split(",") if v], "labels": int(m[3]),
                                         "front": int(m[4])})
    return out


def _table(section: str, first: str) -> list[dict[str, str]]:
    """The Markdown table of `section` whose header starts with `| first |`, as dicts (header marks dropped)."""
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first} |"))

    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]

    head = [re.sub(r" \[lo–hi\]$", "", c) for c in cells(lines[start])]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(head, cells(ln), strict=True)))
    return rows


def test_summary_leads_with_the_fastest_passing_configuration(smoke_report: tuple[str, str, Path]) -> None:
    md, page, _ = smoke_report
    assert list(_sections(md))[0] == "Summary"
    first_h2 = re.search(r"<h2[^>]*>([^<]+)</h2>", page)
    assert first_h2 and first_h2[1] == "Summary"
    assert page.index('id="headline"') < page.index("<table") < page.index("<img")  # the answer before any table
    summary = _sections(md)["Summary"]
    best = 100.0 * 1.5 * 1.8 * 1.6  # bf16, kv none, 2 steps, sp 2: nvfp4 is faster but fails its gate
    line = next(ln for ln in summary.splitlines() if ln.startswith("- **Fastest inference passing its gate"))
    assert "precision=bf16 kv_quant=none sp=2 steps=2 —" in line
    assert f"denoise_fps {best:.1f} [{best * 0.99:.1f}–{best * 1.02:.1f}]" in line
    assert "switch_latency_s 0.05" in line and "gate flicker: pass" in line
    fail = next(ln for ln in summary.splitlines() if ln.startswith("- **Faster, but fails its gate"))
    assert "precision=nvfp4 kv_quant=none sp=2 steps=2 —" in fail and "✗" in fail
    assert "- **Gates**: 32 cells judged: 24 pass, 8 fail, 0 undecided" in summary
    assert "- **Spread**: timed numbers read 'median [lo–hi]' over the cell's repeats (32 cells ran more than " \
        "once)" in summary and RULE not in summary  # the rule itself: once, above the results table


def test_axis_effects_table(smoke_report: tuple[str, str, Path]) -> None:
    md, _, _ = smoke_report
    rows = {(r["axis"], r["value"]): r for r in _table(_sections(md)["Summary"], "axis")}
    assert list(rows) == [("precision", "bf16"), ("precision", "fp8-emulated"), ("precision", "nvfp4"),
                          ("kv_quant", "nvfp4"), ("sp", "2"), ("steps", "2")]
    assert rows[("precision", "bf16")] == {"axis": "precision", "value": "bf16", "vs": "fp32", "pairs": "8",
                                           "× denoise_fps": "1.50×", "× temporal_flickering": "1.000×"}
    assert rows[("precision", "nvfp4")]["× denoise_fps"] == "2.00×"
    assert rows[("precision", "nvfp4")]["× temporal_flickering"] == f"{0.98 / 0.99:.3f}×"
    assert rows[("steps", "2")]["vs"] == "4" and rows[("steps", "2")]["× denoise_fps"] == "1.80×"
    assert rows[("kv_quant", "nvfp4")]["× denoise_fps"] == "0.980×"  # near 1: three decimals, not a rounded 0.98
    assert rows[("kv_quant", "nvfp4")]["pairs"] == "16"


def test_axis_effects_pairs_only_rows_differing_in_one_axis() -> None:
    rows = pd.DataFrame([
        {"precision": "bf16", "steps": 4, "denoise_fps": 10.0},
        {"precision": "fp32", "steps": 4, "denoise_fps": 5.0},
        {"precision": "nvfp4", "steps": 2, "denoise_fps": 100.0},  # differs from both in two axes: no pair
    ])
    eff = axis_effects(rows, ["precision", "steps"], {"× denoise_fps": "denoise_fps"})
    prec = eff[eff["axis"] == "precision"].set_index("value")
    assert prec.loc["bf16", "vs"] == "fp32" and prec.loc["bf16", "× denoise_fps"] == pytest.approx(2.0)
    assert "nvfp4" not in prec.index and prec.loc["bf16", "pairs"] == 1
    assert eff[eff["axis"] == "steps"].empty  # steps 2 has no row equal to a steps-4 row in every other axis


def test_spreads_next_to_timed_numbers_and_gate_marks(smoke_report: tuple[str, str, Path]) -> None:
    md, page, _ = smoke_report
    main = _sections(md)["Results (ok cells)"]
    header = next(ln for ln in main.splitlines() if ln.startswith("| cell |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[cols.index("denoise_fps [lo–hi]") + 1] == "gate"  # the verdict right beside the speed
    assert cols.index("switch_latency_s") == cols.index("e2e_fps") + 1  # interactivity next to the FPS
    assert main.count(RULE) == 1  # the interval rule once, not in every cell
    assert "Same in every row: model=tiny attn=auto exchange=none decode=streaming hardware=cpu compile=none." in main
    rows = {r["cell"]: r for r in _table(main, "cell")}
    fast = rows["nvfp4-none-2-2"]
    fps = _fps("nvfp4", "none", 2, 2)
    assert fast["denoise_fps"] == f"{fps:.1f} [{fps * 0.99:.1f}–{fps * 1.02:.1f}]" and fast["gate"] == "✗ fail"
    assert rows["bf16-none-2-2"]["gate"] == "✓ pass"
    assert fast["e2e_fps"] == f"{fps * 0.8:.1f}"  # not repeated: no interval
    assert f'<th title="{RULE}">denoise_fps<sup>[lo–hi]</sup></th>' in page
    assert re.search(r'<td class="num fail">' + re.escape(fast["denoise_fps"]) + "</td>", page)  # speed in red
    gates = _sections(md)["Gates"]
    assert "### Gate flicker" in gates and "8 fail (marked ✗)" in gates
    failing = _table(gates, "gate")  # the first table: the cells that do not pass; all 32 folded below
    assert len(failing) == 8 and {r["precision"] for r in failing} == {"nvfp4"} and failing[0]["gate"] == "✗ fail"
    assert "#### All 32 cells judged by flicker" in gates
    assert '<details class="section-body"><summary>show</summary>' in page
    assert "|temporal_flickering| ≤ 0.004" in html_lib.unescape(gates) or "temporal_flickering" in gates


def test_plots_are_faceted_and_pareto_labels_only_the_front(smoke_report: tuple[str, str, Path]) -> None:
    _, page, _ = smoke_report
    figs = _figures(page)
    (sp,) = figs["sp"]
    assert max(sp["series"]) <= MAX_LINES < sum(sp["series"]) and len(sp["series"]) <= MAX_FACETS
    assert sum(sp["series"]) == 16  # every configuration drawn once: 4 precisions × 2 kv × 2 steps
    (ladder,) = figs["ladder"]
    assert max(ladder["series"]) <= MAX_BARS and sum(ladder["series"]) == 32
    (chunks,) = figs["chunks"]
    assert max(chunks["series"]) <= MAX_BARS and sum(chunks["series"]) == 32
    (pareto,) = figs["pareto_temporal_flickering"]
    assert 0 < pareto["labels"] == pareto["front"] < 32
    # the same on the figures themselves: lines per axes, labels on the Pareto axes, the gate legend entry
    for ax in FIGURES["sp"].axes:
        assert 1 <= sum(not str(line.get_label()).startswith("_") for line in ax.get_lines()) <= MAX_LINES
    (ax,) = FIGURES["pareto_temporal_flickering"].axes
    assert len(ax.texts) == pareto["front"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "fails its gate" in legend and "Pareto front (labelled)" in legend
    assert [t.get_text() for t in ax.get_legend().get_texts()][:4] == ["fp32", "bf16", "fp8", "nvfp4"]  # colours


def test_facet_bounds_series_per_panel() -> None:
    rows = [{"gpu_name": "g", "frames": 16, "a": a, "b": b, "c": c} for a, b, c in product("wxyz", "pq", "mn")]
    d = pd.DataFrame(rows + [{"gpu_name": "g", "frames": 60, "a": "w", "b": b, "c": "m"} for b in "pq"])
    panels = facet(d, ["gpu_name", "frames"], ["a", "b", "c"], 4)
    assert [p.title for p in panels] == ["g · 16 latent frames · w", "g · 16 latent frames · x",
                                         "g · 16 latent frames · y", "g · 16 latent frames · z",
                                         "g · 60 latent frames"]  # the small group stays one panel
    assert [len(p.series) for p in panels] == [4, 4, 4, 4, 2]
    assert panels[0].axes == ["b", "c"] and panels[-1].axes == ["b"]
    (one,) = facet(d[d["frames"] == 16], ["gpu_name"], ["a", "b", "c"], 16)
    assert len(one.series) == 16 and one.axes == ["a", "b", "c"]


def test_comparisons_collapse_for_a_tiny_only_report(smoke_report: tuple[str, str, Path]) -> None:
    md, page, _ = smoke_report
    comp = _sections(md)["Ours vs published numbers"]
    assert "\n### " not in comp and comp.count("no ok cell matches") == 0
    assert "the paper measured the 5B preset (wan2.2-ti2v-5b) on GPUs; this report holds only tiny cells on cpu" \
        in comp
    published = _sections(md)["Published numbers (reference)"]  # the numbers stay, folded away in the HTML
    assert "*8 tables of the 5B preset on GPUs, for reference only" in published and "### Table 3" in published
    assert re.search(r'id="published-numbers-reference">[^<]*</h2>\s*<p class="meta">8 tables[^<]*</p>\s*'
                     r'<details class="section-body">', page)


def test_identical_strips_are_shown_once(tmp_path: Path) -> None:
    rows = smoke_rows(gates=False)[:3]
    for r, colour in zip(rows, ((10, 20, 30), (10, 20, 30), (200, 20, 30)), strict=True):
        strip = tmp_path / "run" / "cells" / r["cell_id"] / "strip.png"
        strip.parent.mkdir(parents=True)
        Image.new("RGB", (32, 8), colour).save(strip)
        r["artifacts"] = {"strip": f"cells/{r['cell_id']}/strip.png"}
    build_report([_write(tmp_path / "run", rows)], tmp_path / "out")
    strips = _sections((tmp_path / "out" / "index.md").read_text())["Frame strips"]
    assert strips.count("![strip ") == 2 and "3 strips, 2 distinct" in strips
    assert f"2 cells, identical frames — {rows[0]['cell_id']}: " in strips and f"{rows[1]['cell_id']}: " in strips


def test_no_gates_declared_says_so(tmp_path: Path) -> None:
    build_report([_write(tmp_path / "run", smoke_rows(gates=False)[:8])], tmp_path / "out")
    sec = _sections((tmp_path / "out" / "index.md").read_text())
    assert "No gate declared for these cells" in sec["Gates"]
    summary = sec["Summary"]
    assert "- **Fastest inference (tiny on cpu)**:" in summary and "no gate declared: speed alone" in summary
    assert "| gate |" not in sec["Results (ok cells)"] and "Gates**" not in summary


def test_html_escapes_row_text(tmp_path: Path) -> None:
    rows = smoke_rows(gates=False)[:2]
    bad = empty_row("x<script>", "smoke-like", "infer", {"model": "tiny", "precision": "fp32"}, frames=16, seed=0)
    bad.update(status="failed", reason="<script>alert(1)</script> & more")
    index = build_report([_write(tmp_path / "run", [*rows, bad])], tmp_path / "out")
    page = index.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "<script>alert(1)</script> & more" in (tmp_path / "out" / "index.md").read_text()


def test_templates_ship_as_package_data() -> None:
    """Every template file is matched by pyproject's package-data globs (a wheel without them cannot render)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["longlive"]
    pkg = ROOT / "longlive"
    files = sorted(p.relative_to(pkg) for p in (pkg / "report" / "templates").iterdir() if p.is_file())
    assert {"report.html.j2", "_blocks.html.j2", "report.css"} <= {f.name for f in files}
    for f in files:
        assert any(f.match(g) for g in globs), f"longlive/{f} is not package data: add 'report/templates/*' to " \
                                               "[tool.setuptools.package-data] longlive in pyproject.toml"
    assert "report.html.j2" in TEMPLATES.list_templates()


def test_smoke_report_renders_in_chromium(smoke_report: tuple[str, str, Path], chromium_screenshot) -> None:
    _, _, out = smoke_report
    shot = chromium_screenshot(out / "index.html", (1280, 1400))
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
    assert ImageStat.Stat(rgb.convert("L")).stddev[0] > 20  # not blank
    # the summary's headline box (background #eef4ff) is on the first screen, above the fold
    top = rgb.crop((0, 0, 1280, 700))
    box = sum(n for n, c in top.getcolors(1280 * 700) if c == (0xEE, 0xF4, 0xFF))
    assert box > 20000, f"only {box} pixels of the headline box in the first 700 px"
