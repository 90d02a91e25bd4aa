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

from longlive.names import DMD_QUANTISED, KV_QUANT
from longlive.report.paper import TABLE3_HARDWARE, release_measured, table1, table2, table3, table4

GIB = 2**30
LENGTH_TOLERANCE = 0.10
"""Our video length counts as the paper's 16/32/64 s when within this fraction of it."""

PRECISION_ORDER = ("fp32", "bf16", "fp16", "fp8", "mxfp4", "nvfp4")
KV_ORDER = KV_QUANT
DECODE_ORDER = ("batch", "streaming", "async", "device")
RECIPE_ORDER = ("fp32", "bf16", "fp16", "fp8-emulated", "fp8", "mxfp4", "nvfp4")
LAYOUT_ORDER = ("none", "traditional", "balanced")
DMD_RUNGS = DMD_QUANTISED
"""Table 2's ladder: which frozen DMD networks hold NVFP4 weights, each rung adding one."""
TRAIN_WORKLOADS = ("train",)
DMD_WORKLOADS = ("dmd",)
TABLE1_LENGTHS = {96: 16, 192: 32, 384: 64}
"""Latent frames -> the video seconds of Table 1's rows (6 latents per second)."""


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


def norm_recipe(v: Any) -> str | None:
    """A training recipe's precision: like `norm_precision`, but 'fp8-emulated' (simulated quantisation in
    BF16 GEMMs) stays apart from real FP8 GEMMs, since the two cost very different time."""
    if is_missing(v):
        return None
    s = str(v).strip().lower()
    if "emul" in s or "fake" in s:
        base = norm_precision(re.sub(r"[-_ ]*(emulated|emulation|emul|fake)[-_ ]*", "", s)) or s
        return f"{base}-emulated"
    return norm_precision(s)


def norm_layout(v: Any) -> str:
    """The training SP token layout; missing means none."""
    return "none" if is_missing(v) or str(v).strip().lower() in ("", "none", "off", "false") else str(v).strip().lower()


def norm_rung(v: Any) -> str:
    """A dmd_quantised value in the canonical 'generator+real+critic' spelling; missing or 'none' is 'none'."""
    if is_missing(v):
        return "none"
    s = str(v).strip().lower()
    if s in ("", "none", "off", "false", "bf16"):
        return "none"
    parts = {p.strip() for p in re.split(r"[+,/ ]+", s) if p.strip()}
    known = [p for p in ("generator", "real", "critic") if p in parts]
    return "+".join(known + sorted(parts - set(known)))


def flag(v: Any) -> bool | None:
    """A boolean axis (error_recycling) as True / False / None, whatever JSON or parquet made of it."""
    if is_missing(v):
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "yes", "on", "1"):
            return True
        if s in ("false", "no", "off", "0", "none", ""):
            return False
        return None
    try:
        return bool(v)
    except (TypeError, ValueError):
        return None


def workload_kind(v: Any) -> str:
    """'train', 'dmd' or 'infer' (inference, quality and anything older without a training workload)."""
    s = "" if is_missing(v) else str(v).strip().lower()
    if s in TRAIN_WORKLOADS:
        return "train"
    if s in DMD_WORKLOADS:
        return "dmd"
    return "infer"


def split_workloads(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(inference rows, train rows, dmd rows) of a results table, order kept."""
    kind = df["workload"].map(workload_kind) if "workload" in df.columns else pd.Series("infer", index=df.index)
    return df[kind == "infer"], df[kind == "train"], df[kind == "dmd"]


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
    """The device that ran the cell: the manifest's name, else the hardware axis (a request)."""
    name = r.get("gpu_name")
    if is_missing(name) and isinstance(r.get("manifest"), dict):
        name = r["manifest"].get("gpu")
    return r["hardware"] if is_missing(name) else name


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
        kind = gpu_kind(_gpu_name(r)) or gpu_kind(r["hardware"])
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


def _rss(r: pd.Series) -> Any:
    extra = r.get("metrics_extra")
    return extra.get("rss_gb") if isinstance(extra, dict) else None


def memory_gb(r: pd.Series) -> tuple[float, str] | None:
    """(GB, what it measures): the torch allocator peak on a GPU, else host RSS (CPU runs record no peak)."""
    if not is_missing(r.get("peak_allocated_gb")):
        return float(r["peak_allocated_gb"]), "peak_allocated_gb"
    rss = _rss(r)
    if not is_missing(rss):
        try:
            return float(rss), "rss_gb"
        except (TypeError, ValueError):
            return None
    return None


def _device(r: pd.Series) -> str:
    return str(_gpu_name(r))


def dmd_ratio_to_none(dmd: pd.DataFrame) -> pd.Series:
    """Each DMD row's peak_allocated_gb ÷ that of the unquantised rung (dmd_quantised 'none') with the same model,
    device, frames and precision; the same experiment's rung when there are several, else their median. NaN
    where there is no such rung or no peak."""
    out = pd.Series(math.nan, index=dmd.index, dtype="float64")
    if dmd.empty:
        return out

    def key(r: pd.Series) -> tuple:
        return (str(r["model"]).lower(), _device(r), None if is_missing(r["frames"]) else int(r["frames"]),
                norm_recipe(r["precision"]))

    keys = {i: key(r) for i, r in dmd.iterrows()}
    base = [(i, r) for i, r in dmd.iterrows() if norm_rung(r["dmd_quantised"]) == "none"
            and not is_missing(r["peak_allocated_gb"])]
    for i, r in dmd.iterrows():
        if is_missing(r["peak_allocated_gb"]):
            continue
        same = [b for b in base if keys[b[0]] == keys[i]]
        mine = [b for b in same if b[1]["experiment"] == r["experiment"]] or same
        if mine:
            ref = float(pd.Series([float(b[1]["peak_allocated_gb"]) for b in mine]).median())
            out[i] = ratio(r["peak_allocated_gb"], ref)
    return out


def table1_setting(r: pd.Series) -> str | None:
    """The Table 1 column a train row reproduces: precision bf16/nvfp4 × (sp 1 'no SP' | traditional 'SP' |
    balanced 'Balanced SP'), or None."""
    prec = norm_recipe(r["precision"])
    sp = 1 if is_missing(r["sp"]) else int(r["sp"])
    layout = norm_layout(r["train_layout"])
    if sp == 1 and layout == "none":
        sp_name = "no SP"
    elif sp > 1 and layout == "traditional":
        sp_name = "SP"
    elif sp > 1 and layout == "balanced":
        sp_name = "Balanced SP"
    else:
        return None
    if prec == "bf16":
        return f"BF16 {sp_name}"
    if prec == "nvfp4" and sp_name == "Balanced SP":
        return "NVFP4 Balanced SP"
    return None


def compare_table1(ok: pd.DataFrame) -> pd.DataFrame:
    """Our teacher-forcing train cells next to Table 1's seconds per iteration (5B; 96/192/384 latents;
    BF16 no SP / SP (traditional) / Balanced SP, NVFP4 Balanced SP)."""
    pt = table1()
    paper = pt.data
    _, train, _ = split_workloads(ok)
    out = []
    for _, r in train.iterrows():
        if not is_5b(r["model"]) or is_missing(r["iter_s"]) or is_missing(r["frames"]):
            continue
        setting = table1_setting(r)
        latents = int(r["frames"])
        hit = paper[(paper["setting"] == setting) & (paper["latents"] == latents)]
        if setting is None or hit.empty:
            continue
        p = hit.iloc[0]
        er = flag(r["error_recycling"])
        row = {"cell": r["cell_id"], "gpu (ours)": _gpu_name(r), "hardware (paper)": pt.hardware,
               "paper row": f"{setting}, {int(p['video_s'])} s", "precision": r["precision"], "sp": r["sp"],
               "train_layout": r["train_layout"], "error_recycling": er, "latents": latents}
        _triple(row, "s/iter", r["iter_s"], p["iter_s"])
        notes = []
        if bool(p["oom"]):
            notes.append("paper: OOM")
        if er:
            notes.append("ours with error recycling; the paper's Table 1 setting does not say")
        row["note"] = "; ".join(notes)
        out.append(row)
    return pd.DataFrame(out) if out else pd.DataFrame()


def compare_table2(ok: pd.DataFrame) -> pd.DataFrame:
    """Our DMD cells next to Table 2's peak memory per GPU for the same dmd_quantised rung (5B model), with both
    sides' ratio to the unquantised rung."""
    pt = table2()
    paper = pt.data
    _, _, dmd = split_workloads(ok)
    rel = dmd_ratio_to_none(dmd)
    out = []
    for i, r in dmd.iterrows():
        if not is_5b(r["model"]) or is_missing(r["peak_allocated_gb"]):
            continue
        hit = paper[paper["dmd_quantised"] == norm_rung(r["dmd_quantised"])]
        if hit.empty:
            continue
        p = hit.iloc[0]
        row = {"cell": r["cell_id"], "gpu (ours)": _gpu_name(r), "hardware (paper)": pt.hardware,
               "paper row": p["setting"], "precision": r["precision"], "dmd_quantised": r["dmd_quantised"],
               "frames": r["frames"]}
        _triple(row, "peak GB", r["peak_allocated_gb"], p["peak_memory_gb"])
        row["× unquantised ours"] = rel[i]
        row["× unquantised paper"] = float(p["ratio_vs_bf16"])
        prec = norm_recipe(r["precision"])
        row["note"] = "" if prec == "bf16" else f"ours trains in {r['precision']}; the paper's base is BF16"
        out.append(row)
    return pd.DataFrame(out) if out else pd.DataFrame()
