"""Workloads registered by name. The runner only calls `check` (cheap, in the parent: why a cell cannot run
here, or None) and `run` (in the cell's own process: metric columns); it knows nothing else about them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from longlive.experiments import request_fields

WORKLOADS: dict[str, Workload] = {}


@dataclass
class CellContext:
    out: Path                      # this cell's artifact folder
    reference_dir: Path | None     # the fidelity reference cell's artifact folder, when it has finished


class Workload(Protocol):
    name: str

    def check(self, cfg: dict[str, Any]) -> str | None: ...

    def run(self, cfg: dict[str, Any], ctx: CellContext) -> dict[str, Any]: ...


def register_workload(name: str):
    def wrap(cls):
        cls.name = name
        WORKLOADS[name] = cls()
        return cls

    return wrap


def get_workload(name: str) -> Workload:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; registered: {', '.join(WORKLOADS)}")
    return WORKLOADS[name]


# -- shared environment checks ---------------------------------------------------------------------------------
def hardware_reason(cfg: dict[str, Any]) -> str | None:
    """Why this machine is not the hardware the cell asks for (or cannot host its GPU count), else None."""
    import torch

    hw = cfg["hardware"]
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if hw["device"] == "cuda" and gpus == 0:
        return f"hardware {hw['name']} needs a CUDA GPU; this machine has none"
    if hw.get("gpu_name"):
        actual = torch.cuda.get_device_name(0)
        if hw["gpu_name"].lower() not in actual.lower():
            return f"hardware {hw['name']} asks for a {hw['gpu_name']} GPU; this machine has {actual}"
    need = max(int(cfg["sp"]) * int(cfg.get("dp", 1)), int(hw.get("min_gpus") or 0))
    if cfg["decode"].get("vae_device"):
        need += 1 if hw["device"] == "cuda" else 0
    if hw["device"] == "cuda" and need > gpus:
        return f"needs {need} GPUs (sp={cfg['sp']}, decode={cfg['decode']['mode']}); this machine has {gpus}"
    if cfg["decode"]["mode"] == "device" and hw["device"] != "cuda":
        return "decode=device puts the VAE on a second GPU; this cell runs on the CPU"
    return None


def feature_reason(cfg: dict[str, Any]) -> str | None:
    """Axis values this machine or this build cannot run: an explained skip, never a silent fallback."""
    prec = cfg["precision"]
    if prec.get("weights", "none") != "none":
        from longlive.quant.linear import BackendUnavailable, check_backend

        try:
            check_backend(prec["weights"], prec["backend"], cfg["hardware"]["device"])
        except BackendUnavailable as exc:
            return f"precision={prec['name']}: {exc}"
    return None


# -- inference ------------------------------------------------------------------------------------------------
def video_request(cfg: dict[str, Any], progress: bool = False):
    from longlive.infer.video import VideoRequest

    return VideoRequest(
        preset=cfg["model"]["name"], frames=int(cfg["frames"]), prompts=list(cfg["prompts"]), steps=int(cfg["steps"]),
        seed=int(cfg["seed"]), switch_at=cfg.get("switch_at"), device=cfg["hardware"]["device"],
        vae_device=cfg["decode"].get("vae_device"), attn=cfg.get("attn", "auto"),
        decode=cfg["decode"]["mode"], random_weights=bool(cfg.get("random_weights")), progress=progress,
        save_latents=True, **request_fields(cfg["precision"]),
        kv_quant=cfg["kv"]["name"], sp=int(cfg["sp"]), exchange=cfg.get("exchange", "none"),
        compile=cfg.get("compile", "none"),
    )


@register_workload("infer")
class InferWorkload:
    """Generate one video; speed, memory, roofline and the configured quality metrics."""

    def check(self, cfg: dict[str, Any]) -> str | None:
        import dataclasses

        from longlive.infer.video import validate
        from longlive.model.presets import get_preset
        from longlive.parallel.groups import check_sp

        reason = hardware_reason(cfg) or feature_reason(cfg)
        if reason:
            return reason
        check_sp(get_preset(cfg["model"]["name"]), int(cfg["sp"]))
        try:
            validate(dataclasses.replace(video_request(cfg), sp=1))  # the cell's ranks check the SP launch itself
        except FileNotFoundError as exc:
            return f"missing weights: {exc}"
        return None

    def run(self, cfg: dict[str, Any], ctx: CellContext) -> dict[str, Any]:
        import torch

        from longlive.infer.video import make_video
        from longlive.measure.roofline import roofline_metrics
        from longlive.model.attention import resolve_backend
        from longlive.model.presets import get_preset

        req = video_request(cfg)
        out = make_video(req, ctx.out)
        if out.get("rank_not_main"):
            return {}
        frames = out.pop("video_uint8")
        out.pop("model_config")
        extra = {"chunk_ms": out.pop("chunk_ms"), "windows": out.pop("windows"), "notes": out.pop("notes")}
        dev = torch.device(req.device)
        model_cfg = get_preset(req.preset)
        if cfg.get("roofline", True):
            out.update(roofline_metrics(model_cfg, req.steps, out["denoise_fps"], dev, req.torch_dtype,
                                        resolve_backend(req.attn, dev)))
            out["timing_definition"]["roofline"] = (
                "gemm_tflops / attn_tflops measured in this process at the model's shapes; ceiling_fps = frames "
                "per chunk / ((steps+1) x (GEMM FLOP / gemm rate + attention FLOP / attention rate)); mfu = "
                "achieved FLOP/s / measured dense GEMM rate")
        out["linear_backend"] = req.linear_backend if req.quant != "none" else None
        out["weight_rule"] = req.weight_rule if req.quant == "nvfp4" else None
        out.update(quality_metrics(cfg, frames, ctx))
        from longlive.quant.kernels import active_kernels

        extra["quant_kernels"] = active_kernels()
        out["metrics_extra"] = extra
        return out


def quality_metrics(cfg: dict[str, Any], frames, ctx: CellContext) -> dict[str, Any]:
    """Registered weight-free metrics on the video, and fidelity against the reference cell's artifacts."""
    out: dict[str, Any] = {}
    names = list((cfg.get("quality") or {}).get("metrics") or [])
    if names:
        from longlive.runner.quality import compute_metric

        for name in names:
            out[name] = compute_metric(name, frames=frames)
    if ctx.reference_dir is not None:
        from longlive.runner.quality import fidelity_against

        out.update(fidelity_against(ctx.out, ctx.reference_dir))
    return out


@register_workload("quality")
class QualityWorkload(InferWorkload):
    """Inference plus VBench dimensions (optional extra, offline weights)."""

    def check(self, cfg: dict[str, Any]) -> str | None:
        reason = super().check(cfg)
        if reason:
            return reason
        dims = (cfg.get("quality") or {}).get("vbench_dimensions") or []
        if dims:
            from longlive.runner.quality import vbench_unavailable_reason

            return vbench_unavailable_reason(dims)
        return None

    def run(self, cfg: dict[str, Any], ctx: CellContext) -> dict[str, Any]:
        out = super().run(cfg, ctx)
        dims = (cfg.get("quality") or {}).get("vbench_dimensions") or []
        if dims:
            from longlive.runner.quality import vbench_scores

            out.update(vbench_scores(ctx.out, dims))
        return out


# -- training ---------------------------------------------------------------------------------------------------
TRAIN_RECIPES = ("fp32", "bf16", "fp8", "fp8-emulated", "nvfp4")
"""Runner precisions that name a training recipe (longlive.quant.training); nvfp4 is emulated below sm100."""


def _device_for(cfg: dict[str, Any]):
    """(device, sp process group) of this cell's process; joins torchrun's group for sp > 1."""
    import torch

    sp = int(cfg["sp"])
    if sp * int(cfg.get("dp", 1)) > 1:
        from longlive.parallel.groups import init_parallel

        dims = init_parallel(sp, device=None if cfg["hardware"]["device"] == "cuda" else "cpu")
        return dims.device, (dims.sp_group if sp > 1 else None)
    return torch.device("cuda" if cfg["hardware"]["device"] == "cuda" else "cpu"), None


@register_workload("train")
class TrainWorkload:
    """Stage-1 teacher-forcing iterations (random latents: the cost does not depend on the data)."""

    def check(self, cfg: dict[str, Any]) -> str | None:
        from longlive.model.presets import get_preset

        reason = hardware_reason(cfg)
        if reason:
            return reason
        prec = cfg["precision"]["name"]
        if prec not in TRAIN_RECIPES:
            return f"precision={prec} has no training recipe here (training recipes: {', '.join(TRAIN_RECIPES)})"
        from longlive.quant.linear import BackendUnavailable
        from longlive.quant.training import check_training_recipe, get_training_recipe

        if prec not in ("fp32", "bf16"):
            try:
                check_training_recipe(get_training_recipe(prec), cfg["hardware"]["device"])
            except BackendUnavailable as exc:
                return f"precision={prec}: {exc}"
        sp, layout = int(cfg["sp"]), cfg.get("train_layout", "none")
        if int(cfg.get("dp", 1)) < 1:
            raise ValueError(f"dp must be ≥ 1, got {cfg.get('dp')}")
        if sp > 1 and layout not in ("traditional", "balanced"):
            raise ValueError(f"train with sp={sp} needs train_layout=traditional or balanced, got {layout!r}")
        if sp > 1 and cfg.get("error_recycling"):
            return "error_recycling is single-process / data-parallel only (the SP losses do not return the " \
                   "per-block predictions it records)"
        mc = get_preset(cfg["model"]["name"])
        frames = int(cfg["frames"])
        if frames % (sp * mc.chunk_frames):
            raise ValueError(f"train frames={frames} must be a multiple of sp·chunk = {sp * mc.chunk_frames}")
        return None

    def run(self, cfg: dict[str, Any], ctx: CellContext) -> dict[str, Any]:
        from longlive.train.measure import TRAIN_TIMING, measure_train

        device, sp_group = _device_for(cfg)
        sp = int(cfg["sp"])
        m = measure_train(cfg["model"]["name"], int(cfg["frames"]), precision=cfg["precision"]["name"],
                          layout=cfg.get("train_layout", "none") if sp > 1 else "none",
                          iters=int(cfg.get("train_iters", 3)), device=device, out_dir=ctx.out / "train",
                          seed=int(cfg["seed"]), attn=cfg.get("train_attn", "auto"),
                          error_recycling=bool(cfg.get("error_recycling")), sp_group=sp_group)
        extra = m.pop("extra")
        return {**m, "timing_definition": {"iter_s": TRAIN_TIMING}, "metrics_extra": extra}


@register_workload("dmd")
class DMDWorkload:
    """Stage-2 DMD iterations with LoRA; the dmd_quantised axis puts frozen networks in NVFP4 (Table 2)."""

    def check(self, cfg: dict[str, Any]) -> str | None:
        from longlive.model.presets import get_preset
        from longlive.train.measure import DMD_RUNGS

        reason = hardware_reason(cfg)
        if reason:
            return reason
        if int(cfg["sp"]) != 1 or int(cfg.get("dp", 1)) != 1:
            return "DMD runs on one device here (spec 04: no SP in Stage 2; this workload measures one rank)"
        prec = cfg["precision"]
        if prec.get("weights", "none") != "none":
            return (f"precision={prec['name']}: DMD quantises its frozen networks through the dmd_quantised axis; "
                    "run it with precision=bf16 or fp32")
        rung = cfg.get("dmd_quantised", "none")
        if rung not in DMD_RUNGS:
            raise ValueError(f"dmd_quantised={rung!r}; choose one of {', '.join(DMD_RUNGS)}")
        mc = get_preset(cfg["model"]["name"])
        if int(cfg["frames"]) % mc.chunk_frames:
            raise ValueError(f"dmd frames={cfg['frames']} must be whole blocks of {mc.chunk_frames}")
        return None

    def run(self, cfg: dict[str, Any], ctx: CellContext) -> dict[str, Any]:
        from longlive.infer.video import DTYPES
        from longlive.train.measure import DMD_TIMING, measure_dmd

        device, _ = _device_for(cfg)
        attn = cfg.get("attn", "auto")
        if attn == "auto" and device.type == "cuda":
            attn = "flash"  # the rollout backpropagates through its attention: flash has the backward we tested
        m = measure_dmd(cfg["model"]["name"], int(cfg["frames"]), rung=cfg.get("dmd_quantised", "none"),
                        iters=int(cfg.get("dmd_iters", 2)), device=device, out_dir=ctx.out / "dmd",
                        seed=int(cfg["seed"]), rank=int(cfg.get("dmd_lora_rank", 128)), attn=attn,
                        dtype=DTYPES[cfg["precision"]["dtype"]])
        extra = m.pop("extra")
        return {**m, "timing_definition": {"iter_s": DMD_TIMING, "peak_allocated_gb": DMD_TIMING},
                "metrics_extra": extra}
