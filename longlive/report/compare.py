"""Match our cells to published rows and put the numbers side by side with ours/paper ratios.

Matching is on normalised axis values (the runner may say "bfloat16" where the paper says "BF16") and
only for the model the paper measured, so a tiny CPU run is never held up against a GB200 figure. The
hardware of both sides is always a column: a ratio across machines is information, not a verdict.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from longlive.report.paper import TABLE3_HARDWARE, release_measured, table3, table4

GIB = 2**30
LENGTH_TOLERANCE = 0.10
"""Our video length counts as the paper's 16/32/64 s when within this fraction of it."""

PRECISION_ORDER = ("fp32", "bf16", "fp16", "fp8", "mxfp4", "nvfp4")
KV_ORDER = ("none", "fp8", "nvfp4")
DECODE_ORDER = ("batch", "streaming", "async", "device")


def is_missing(v: Any) -> bool:
    """None, NaN and pandas NA all mean 'not recorded'."""
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def norm_precision(v: Any) -> str | None:
    """One spelling per number format, whatever the config said (bfloat16, BF16, nvfp4_w4a4, ...)."""
    if is_missing(v):
        return None
    s = str(v).strip().lower()
    if "nvfp4" in s or "w4a4" in s:
        return "nvfp4"
    if "mxfp4" in s:
        return "mxfp4"
    if "fp8" in s or "float8" in s or "w8a8" in s:
        return "fp8"
    return {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}.get(s, s)


def norm_kv(v: Any) -> str:
    """KV-cache storage: anything unquantised is 'none'."""
    p = norm_precision(v)
    return "none" if p in (None, "", "none", "off", "false", "bf16", "fp16", "fp32") else p


def decode_class(v: Any) -> str:
    """'async' when decoding overlaps the denoiser (thread or other GPU), else 'sync'."""
    return "async" if not is_missing(v) and str(v).lower() in ("async", "device") else "sync"


def gpu_kind(v: Any) -> str | None:
    """The accelerator model in a device name ('NVIDIA H200' -> 'H200'), None if unrecognised."""
    if is_missing(v):
        return None
    m = re.search(r"\b(GB\d{3}|[ABHL]\d{2,3}S?)\b", str(v).upper())
    return m.group(1) if m else None


def is_5b(model: Any) -> bool:
    """The paper's LongLive-2.0 numbers are for the Wan2.2-TI2V-5B based model only."""
    return not is_missing(model) and "5b" in str(model).lower()


def find_key(d: Any, names: tuple[str, ...], depth: int = 3) -> Any:
    """The first value under any of `names` in a nested config (breadth first, a few levels deep)."""
    level = [d]
    for _ in range(depth):
        nxt = []
        for x in level:
            if isinstance(x, dict):
                for n in names:
                    if n in x and not isinstance(x[n], dict):
                        return x[n]
                nxt.extend(v for v in x.values() if isinstance(v, dict))
        level = nxt
    return None


def _gpu_name(r: pd.Series) -> Any:
    """The device that ran the cell: the manifest's name, else the gpu axis (a hardware request)."""
    name = r.get("gpu_name")
    if is_missing(name) and isinstance(r.get("manifest"), dict):
        name = r["manifest"].get("gpu")
    return r["gpu"] if is_missing(name) else name


def ratio(ours: Any, paper: Any) -> float:
    if is_missing(ours) or is_missing(paper) or not paper:
        return math.nan
    return float(ours) / float(paper)


def _triple(row: dict, label: str, ours: Any, ref: Any, ref_name: str = "paper") -> None:
    """Three columns: '<label> ours', '<label> <ref_name>', '<label> ours/<ref_name>'."""
    row[f"{label} ours"] = math.nan if is_missing(ours) else float(ours)
    row[f"{label} {ref_name}"] = math.nan if is_missing(ref) else float(ref)
    row[f"{label} ours/{ref_name}"] = ratio(ours, ref)


def _drop_empty_triples(df: pd.DataFrame, ref_name: str = "paper") -> pd.DataFrame:
    """Remove metric triples where either side has no value on any row: an all-blank column tells nothing."""
    drop = []
    for c in df.columns:
        if c.endswith(" ours"):
            trio = [c, c[: -len(" ours")] + f" {ref_name}", c[: -len(" ours")] + f" ours/{ref_name}"]
            if any(df[t].isna().all() for t in trio):
                drop += trio
    return df.drop(columns=drop)


def _length_match(video_s: Any) -> int | None:
    if is_missing(video_s):
        return None
    for s in (16, 32, 64):
        if abs(float(video_s) - s) <= LENGTH_TOLERANCE * s:
            return s
    return None


def compare_table3(ok: pd.DataFrame) -> pd.DataFrame:
    """Our inference cells next to the Table 3 row with the same precision / KV / decode / steps."""
    paper = table3().data
    out = []
    for _, r in ok.iterrows():
        if not is_5b(r["model"]) or is_missing(r["steps"]) or (is_missing(r["denoise_fps"]) and is_missing(r["e2e_s"])):
            continue
        hit = paper[(paper["precision"] == norm_precision(r["precision"]))
                    & (paper["kv_quant"] == norm_kv(r["kv_quant"]))
                    & (paper["decode"] == decode_class(r["decode"])) & (paper["steps"] == int(r["steps"]))]
        if hit.empty or (not is_missing(r["sp"]) and int(r["sp"]) != 1):
            continue
        p = hit.iloc[0]
        row = {"cell": r["cell_id"], "gpu (ours)": _gpu_name(r), "hardware (paper)": TABLE3_HARDWARE,
               "paper row": p["setting"], "precision": r["precision"], "kv_quant": r["kv_quant"],
               "decode": r["decode"], "steps": r["steps"]}
        _triple(row, "FPS", r["denoise_fps"], p["denoise_fps"])
        s = _length_match(r["video_seconds"])
        row["video s"] = r["video_seconds"]
        _triple(row, "E2E s", r["e2e_s"], p[f"e2e_s_{s}"] if s else math.nan)
        _triple(row, "memory GB", r["peak_allocated_gb"], p[f"memory_gb_{s}"] if s else math.nan)
        notes = []
        if str(r["decode"]).lower() == "async":
            notes.append("ours overlaps decode on the same GPU; the paper decodes on an extra GPU")
        if s is None and not is_missing(r["e2e_s"]):
            notes.append("video length is not 16/32/64 s: no E2E match")
        row["note"] = "; ".join(notes)
        out.append(row)
    return _drop_empty_triples(pd.DataFrame(out)) if out else pd.DataFrame()


def compare_release(ok: pd.DataFrame) -> pd.DataFrame:
    """Our cells next to the release measured on the same GPU kind: the most like-for-like comparison."""
    rel = release_measured().data
    out = []
    for _, r in ok.iterrows():
        kind = gpu_kind(_gpu_name(r)) or gpu_kind(r["gpu"])
        if (not is_5b(r["model"]) or kind is None or is_missing(r["steps"]) or is_missing(r["denoise_fps"])
                or norm_kv(r["kv_quant"]) != "none"):
            continue
        attn_raw = find_key(r["config"], ("attn", "attention", "attn_backend"))
        attn = "flash" if attn_raw is not None and "flash" in str(attn_raw).lower() else "cudnn"
        hit = rel[(rel["gpu"] == kind) & (rel["precision"] == norm_precision(r["precision"]))
                  & (rel["steps"] == int(r["steps"])) & (rel["attn"] == attn)]
        if hit.empty or (not is_missing(r["sp"]) and int(r["sp"]) != 1):
            continue
        p = hit.iloc[0]
        row = {"cell": r["cell_id"], "gpu (ours)": _gpu_name(r), "gpu (release)": p["gpu"], "release run": p["setting"],
               "precision": r["precision"], "steps": r["steps"], "attention (ours)": attn_raw}
        _triple(row, "FPS", r["denoise_fps"], p["denoise_fps"], "release")
        _triple(row, "chunk ms", r["chunk_ms_median"], p["chunk_ms"], "release")
        mem = r["peak_allocated_gb"] * 1e9 / GIB if not is_missing(r["peak_allocated_gb"]) else math.nan
        _triple(row, "peak GiB", mem, p["peak_memory_gib"], "release")
        row["note"] = "" if attn_raw is not None and str(attn_raw).lower() in ("cudnn", "flash") else \
            f"attention {attn_raw or 'not recorded'}: compared with the release's {attn} run"
        out.append(row)
    return _drop_empty_triples(pd.DataFrame(out), "release") if out else pd.DataFrame()


def compare_table4(ok: pd.DataFrame) -> pd.DataFrame:
    """Our VBench scores next to Table 4 (same precision and steps, 5B model); ours rescaled if in 0..1."""
    paper = table4().data
    paper = paper[paper["precision"].notna()]
    out = []
    for _, r in ok.iterrows():
        if not is_5b(r["model"]) or is_missing(r["steps"]) or all(
                is_missing(r[c]) for c in ("vbench_total", "vbench_quality")):
            continue
        hit = paper[((paper["precision"] == norm_precision(r["precision"])) & (paper["steps"] == int(r["steps"])))
                    .fillna(False).astype(bool)]
        if hit.empty:
            continue
        p = hit.iloc[0]
        row = {"cell": r["cell_id"], "paper row": p["setting"], "precision": r["precision"], "steps": r["steps"]}
        scaled = False
        for col, label in (("vbench_total", "total"), ("vbench_quality", "quality"), ("vbench_semantic", "semantic")):
            v = r[col]
            if not is_missing(v) and float(v) <= 1.5:
                v, scaled = float(v) * 100, True
            _triple(row, label, v, p[col])
        row["note"] = "ours ×100 (scored as fractions)" if scaled else ""
        out.append(row)
    return _drop_empty_triples(pd.DataFrame(out)) if out else pd.DataFrame()
