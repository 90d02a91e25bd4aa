"""The `tiny_default` workload: the tiny default recipe (`longlive.train.tiny.train_tiny`: codec, text encoder, AR
model, 2-step LoRA, evaluation) trained on CPU within `train_minutes`, so its evaluation becomes a result row
(`longlive sweep +experiment=tiny_default`). Weights, strips and tiny_eval.json land in the cell's `tiny/` folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from longlive.experiments.spec import RunSpec
from longlive.train.tiny import EVAL_PROMPTS, EVAL_SEEDS, train_tiny
from longlive.workloads import CellContext
from longlive.workloads.checks import hardware_reason

VARIANTS = {"4-step": "", "2-step (LoRA)": "_2step", "4-step NVFP4 W4A4 + NVFP4 KV": "_nvfp4"}
"""train_tiny's evaluation runs -> column suffix (a run it did not make, e.g. the LoRA with no budget left, gives
None columns)."""

EVAL_METRICS = ("palette_match", "prompt_colour_match", "first_frame_prompt_colour_match", "shape_match", "shape_iou",
                "foreground_fraction", "temporal_flickering", "centroid_travel_px", "denoise_fps")
"""The per-run numbers of train_tiny's evaluation made flat columns (tiny_eval.json's "metric" defines them)."""

WEIGHT_FILES = ("model_bf16.pt", "model_2step.pt", "vae.safetensors", "vae_stats.json", "text_encoder.safetensors",
                "tiny_eval.json", "vae_reconstruction.png")
"""What train_tiny writes into its folder (listed as artifacts when present)."""

WALL_TIMING = ("train_wall_s: wall clock of train_tiny in the cell's process (codec fit, data encoding, text encoder, "
               "AR teacher forcing, 2-step LoRA, evaluation); train_minutes is the budget its phases are planned "
               "against (60 s kept for the evaluation), so the wall time lands near it, not exactly on it")
FPS_TIMING = (f"mean over the evaluation generations ({len(EVAL_PROMPTS)} prompts x {EVAL_SEEDS} seeds, 16 latent "
              "frames, tiny preset on this CPU) of each generation's denoise_fps = video frames / wall time of the "
              "chunk loop after warm-up chunks")


def _number(v: Any) -> float | None:
    """A float column value; None for what is missing (NaN stays NaN: train_tiny's 'nothing drawn')."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def eval_columns(result: dict[str, Any]) -> dict[str, Any]:
    """train_tiny's return value -> the row's flat columns (every column present; None where a run is missing)."""
    evals = result.get("eval") or {}
    cols: dict[str, Any] = {}
    for run, suffix in VARIANTS.items():
        ev = evals.get(run) or {}
        cols.update({f"{m}{suffix}": _number(ev.get(m)) for m in EVAL_METRICS})
    rec = result.get("vae_reconstruction") or {}
    cols["vae_psnr_db"] = _number(rec.get("psnr_db"))
    cols["vae_palette_match"] = _number(rec.get("palette_match"))
    cols["ar_steps"] = result.get("ar_steps")
    cols["lora_steps"] = (result.get("lora") or {}).get("steps", 0)
    minutes = _number(result.get("minutes"))
    cols["train_wall_s"] = minutes * 60 if minutes is not None and math.isfinite(minutes) else None
    return cols


def artifacts(run_dir: Path, out: Path, result: dict[str, Any]) -> dict[str, str]:
    """name -> path relative to the cell folder `out`, for the weight files and the strips train_tiny wrote."""
    found: dict[str, str] = {}
    for name in WEIGHT_FILES:
        if (run_dir / name).is_file():
            found[Path(name).stem] = str((run_dir / name).relative_to(out))
    for run, suffix in VARIANTS.items():
        strip = ((result.get("eval") or {}).get(run) or {}).get("strip")
        if strip and Path(strip).is_file() and Path(strip).resolve().is_relative_to(out.resolve()):
            found[f"strip{suffix or '_4step'}"] = str(Path(strip).resolve().relative_to(out.resolve()))
    return found


class TinyDefaultWorkload:
    """The tiny default recipe on CPU under a wall-clock budget; its evaluation numbers are the row."""

    name = "tiny_default"

    def check(self, spec: RunSpec) -> str | None:
        if spec.model.name != "tiny":
            raise ValueError(f"tiny_default trains the tiny preset; got model={spec.model.name}")
        if spec.precision.dtype != "fp32" or spec.precision.linear_quant != "none":
            raise ValueError(f"tiny_default trains in fp32 (its NVFP4 variant is one of its evaluations); got "
                             f"precision={spec.precision.name}")
        if spec.sp * spec.dp != 1:
            raise ValueError(f"tiny_default is one process; got sp={spec.sp}, dp={spec.dp}")
        if not spec.train_minutes > 0:
            raise ValueError(f"train_minutes={spec.train_minutes} must be > 0")
        if spec.hardware.device == "cuda":
            return f"the tiny default is a CPU recipe; hardware={spec.hardware.name} is a CUDA cell (use hardware=cpu)"
        return hardware_reason(spec)

    def run(self, spec: RunSpec, ctx: CellContext) -> dict[str, Any]:
        run_dir = ctx.out / "tiny"
        result = train_tiny(run_dir, minutes=spec.train_minutes, seed=spec.seed)
        cols = eval_columns(result)
        timing = {"train_wall_s": WALL_TIMING}
        timing.update({f"denoise_fps{s}": f"denoise_fps{s}: {FPS_TIMING}" for s in VARIANTS.values()})
        extra = {k: result.get(k) for k in ("eval", "metric", "vae_reconstruction", "vae", "text_encoder", "lora",
                                            "ar_summary")}
        extra["recipe"] = ((result.get("manifest") or {}).get("config") or {}).get("recipe")
        return {**cols, "timing_definition": timing, "metrics_extra": extra,
                "artifacts": artifacts(run_dir, ctx.out, result)}
