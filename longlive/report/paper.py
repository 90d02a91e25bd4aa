"""Published numbers to compare against, each tagged with the hardware and timing definition behind it.

Sources: LongLive-2.0 (arXiv 2605.18739) Tables 1-5, and the release's own code measured on our H200
(docs/spec/05-benchmarks.md). A number without its machine and its clock is not comparable, so every table
here carries both, and the report prints them next to ours instead of implying one machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

PAPER = "LongLive-2.0 (arXiv 2605.18739)"
NAN = float("nan")


@dataclass(frozen=True)
class PaperTable:
    """One published table: the data plus where and how it was measured."""

    key: str
    title: str
    hardware: str
    timing: str
    data: pd.DataFrame
    note: str = ""


def table1() -> PaperTable:
    """AR training seconds per iteration; NaN where the paper reports OOM."""
    rows = [
        (16, 96, 75.3, 52.2, 45.8, 40.1),
        (32, 192, 202.7, 162.7, 136.8, 119.3),
        (64, 384, NAN, 1372.9, 1196.5, 639.5),
    ]
    wide = pd.DataFrame(rows, columns=["video_s", "latents", "BF16 no SP", "BF16 SP", "BF16 Balanced SP",
                                       "NVFP4 Balanced SP"])
    data = wide.melt(id_vars=["video_s", "latents"], var_name="setting", value_name="iter_s")
    data["oom"] = data["iter_s"].isna()
    return PaperTable("table1", "Table 1 — AR training, seconds per iteration", "GPU type and SP degree not stated",
                      "iter_s: seconds per training iteration (averaging not stated)", data,
                      "64 s BF16 no SP: OOM. NVFP4 Balanced SP at 64 s is 2.15× faster than BF16 SP.")


def table2() -> PaperTable:
    """DMD peak memory per GPU for the progressive NVFP4 recipe; `dmd_quantised` is our axis value for each rung
    (which frozen networks hold NVFP4 weights)."""
    data = pd.DataFrame([
        ("BF16 generator / real score / critic", "none", 70.5, 1.00),
        ("NVFP4 generator", "generator", 63.3, 0.90),
        ("+ NVFP4 real score with LoRA", "generator+real", 57.2, 0.81),
        ("+ NVFP4 critic with LoRA", "generator+real+critic", 49.0, 0.69),
    ], columns=["setting", "dmd_quantised", "peak_memory_gb", "ratio_vs_bf16"])
    return PaperTable("table2", "Table 2 — DMD peak memory per GPU", "GPU type not stated",
                      "peak memory per GPU, GB (allocator measure not stated)", data)


TABLE3_HARDWARE = "1× GB200 (+1 GPU for async decoding)"


def table3() -> PaperTable:
    """The inference ladder, one row per setting, with our axis values so our cells can be matched."""
    cols = ["setting", "precision", "kv_quant", "decode", "steps", "denoise_fps",
            "e2e_s_16", "e2e_s_32", "e2e_s_64", "memory_gb_16", "memory_gb_32", "memory_gb_64"]
    data = pd.DataFrame([
        ("BF16", "bf16", "none", "sync", 4, 24.8, 26.6, 53.2, 112.9, 36.4, 36.4, 36.4),
        ("NVFP4 W4A4", "nvfp4", "none", "sync", 4, 32.0, 22.9, 46.6, 96.0, 29.7, NAN, NAN),
        ("+ NVFP4 KV cache", "nvfp4", "nvfp4", "sync", 4, 29.7, 23.8, 48.9, 99.5, 19.4, NAN, NAN),
        ("+ async decoding", "nvfp4", "nvfp4", "async", 4, 29.7, 15.9, 29.1, 57.6, 19.4, NAN, NAN),
        ("3 steps", "nvfp4", "nvfp4", "async", 3, 35.2, 12.7, 23.2, 46.0, NAN, NAN, NAN),
        ("2 steps", "nvfp4", "nvfp4", "async", 2, 45.7, 11.2, 19.2, 36.3, 19.4, NAN, NAN),
    ], columns=cols)
    return PaperTable("table3", "Table 3 — inference ladder", TABLE3_HARDWARE,
                      "FPS: denoising loop (warm-up handling not stated); E2E: seconds per 16/32/64 s video; "
                      "memory: total GB", data,
                      "Each row adds to the one above; 'async' decodes on an extra GPU.")


def table3_by_length() -> pd.DataFrame:
    """Table 3's E2E seconds and memory in long form: one row per (setting, video length)."""
    t = table3().data
    out = []
    for _, r in t.iterrows():
        for s in (16, 32, 64):
            out.append({"setting": r["setting"], "video_s": s, "e2e_s": r[f"e2e_s_{s}"],
                        "memory_gb": r[f"memory_gb_{s}"]})
    return pd.DataFrame(out)


def table4() -> PaperTable:
    """VBench (short prompts); Total = (4·Quality + Semantic)/5."""
    data = pd.DataFrame([
        ("LongLive-2.0 5B BF16 4-step", "wan2.2-ti2v-5b", "bf16", 4, 85.06, 86.67, 78.63),
        ("LongLive-2.0 5B NVFP4 4-step", "wan2.2-ti2v-5b", "nvfp4", 4, 84.51, 86.43, 76.81),
        ("LongLive-2.0 5B NVFP4 2-step", "wan2.2-ti2v-5b", "nvfp4", 2, 83.14, 85.40, 74.12),
        ("LongLive 1.3B", "wan2.1-t2v-1.3b", None, None, 84.87, 86.97, 76.47),
        ("Self-Forcing", None, None, None, 84.31, 85.07, 81.28),
        ("Wan2.2-TI2V-5B 50-step", "wan2.2-ti2v-5b", None, 50, 83.32, NAN, NAN),
    ], columns=["setting", "model", "precision", "steps", "vbench_total", "vbench_quality", "vbench_semantic"])
    data["steps"] = data["steps"].astype("Int64")
    return PaperTable("table4", "Table 4 — VBench (short)", "not applicable (quality)",
                      "VBench official scoring; Total = (4·Quality + Semantic)/5", data)


def table5() -> PaperTable:
    """VBench-Long dimensions on 60 s videos."""
    data = pd.DataFrame([
        ("LongLive-2.0 BF16", "bf16", 97.48, 97.00, 98.86, 60.62, 53.68, 65.51),
        ("LongLive-2.0 NVFP4", "nvfp4", 97.62, 96.97, 98.94, 45.88, 53.72, 66.24),
    ], columns=["setting", "precision", "subject_consistency", "background_consistency", "motion_smoothness",
                "dynamic_degree", "aesthetic_quality", "imaging_quality"])
    return PaperTable("table5", "Table 5 — VBench-Long, 60 s", "not applicable (quality)",
                      "VBench-Long per-dimension scores (%)", data)


RELEASE_TIMING = ("denoise loop of the release's own inference code: random weights, 1280×704, 12 chunks, first 4 "
                  "dropped; peak memory in GiB")


def release_measured() -> PaperTable:
    """The published code measured by us (spec 05): same machine kind as ours, so the fairest comparison."""
    data = pd.DataFrame([
        ("BF16, cuDNN attention", "H200", "bf16", "cudnn", 4, 24.7, 1295.0, 33.8),
        ("BF16, cuDNN attention", "H200", "bf16", "cudnn", 3, 30.8, NAN, 33.8),
        ("BF16, cuDNN attention", "H200", "bf16", "cudnn", 2, 41.0, NAN, 33.8),
        ("BF16, FlashAttention-2", "H200", "bf16", "flash", 4, 18.3, NAN, 32.5),
        ("FP8 (torchao row-wise W8A8, not compiled)", "H200", "fp8", "cudnn", 4, 21.4, NAN, 28.9),
        ("FP8 (torchao row-wise W8A8, not compiled)", "H200", "fp8", "cudnn", 3, 26.7, NAN, 28.9),
        ("FP8 (torchao row-wise W8A8, not compiled)", "H200", "fp8", "cudnn", 2, 35.5, NAN, 28.9),
        ("BF16, cuDNN attention", "H100", "bf16", "cudnn", 4, 23.6, 1356.0, 33.8),
        ("BF16, cuDNN attention", "H100", "bf16", "cudnn", 2, 39.0, NAN, 33.8),
    ], columns=["setting", "gpu", "precision", "attn", "steps", "denoise_fps", "chunk_ms", "peak_memory_gib"])
    return PaperTable("release", "The published code, measured on one H200 / H100 (spec 05)", "1× H200; rows "
                      "marked H100: 1× H100", RELEASE_TIMING, data,
                      "Its Wan2.2 VAE decodes a 32-frame chunk in ≈ 1440 ms on the H200 (≈ 1520 ms on the H100): "
                      "end to end on one GPU without overlap ≈ 11.7 FPS at 4 steps.")


def community_reports() -> PaperTable:
    """What users measured on the release (public issues): the numbers that motivated a pinned definition."""
    data = pd.DataFrame([
        ("BF16", "H100", "bf16", 4, 18.6, 14.1),
        ("FP8 + compile", "H100", "fp8", 4, 15.5, 12.3),
        ("NVFP4 4-step", "B200", "nvfp4", 4, 20.4, 16.4),
        ("NVFP4 2-step", "B200", "nvfp4", 2, 33.8, 24.1),
    ], columns=["setting", "gpu", "precision", "steps", "denoise_fps", "e2e_fps"])
    return PaperTable("community", "User reports on the release (public issues)", "per row (1 GPU each)",
                      "denoise loop / streaming end to end at 1280×704 with the shipped configs (exact clocks "
                      "not stated)", data, "Step count of the H100 rows is not stated; 4 assumed.")


def ceilings() -> PaperTable:
    """Denoise-loop ceilings of the 5B preset from measured kernel rates (spec 05, physical limit)."""
    data = pd.DataFrame([
        ("BF16 GEMM + BF16 attention", "bf16", 4, 908.0, 35.0),
        ("FP8 GEMM + BF16 attention", "fp8", 4, 732.0, 44.0),
        ("BF16", "bf16", 2, 545.0, 59.0),
        ("FP8 GEMM", "fp8", 2, 439.0, 73.0),
    ], columns=["setting", "precision", "steps", "chunk_ms", "ceiling_fps"])
    return PaperTable("ceilings", "Denoise-loop ceilings, 5B at 704×1280, chunk 8, window 32 (spec 05)",
                      "one H100/H200 (kernel rates measured on an H200)",
                      "denoise loop, steady state at full window (kernel-rate bound, not a measurement)", data)


def all_tables() -> list[PaperTable]:
    """Every published table, in the order the report prints them."""
    return [table3(), release_measured(), community_reports(), ceilings(), table1(), table2(), table4(), table5()]
