"""Validation during training: a fixed prompt set generated every `validate_every` optimiser steps.

Why through the assembler: the videos are made by `infer.assemble.make_video` from a generator file holding the
current weights (EMA by default, which equal the live weights before `ema_start`), so validation shows exactly what
`longlive generate --checkpoint` would make of this step — the same text encoder, VAE, KV cache, scheduler and I2V
conditioning (`--image`) — and never touches the training model (FSDP shards, activation checkpointing and
low-precision recipes stay out of it). The global RNG is forked around it, so a run with validation follows the same
loss trajectory as one without.

Per validation, under `<out>/validation/step_<n>/`: `<i>/video.mp4` and `<i>/strip.png` (written by the assembler
with `output.write_frame_strip`) for prompt i, and `metrics.json`: the weight-free metrics of `longlive.eval`
(`temporal_flickering`; for the tiny preset also the procedural task's `palette_match`, `foreground_fraction` and,
when the prompt names a shape, `shape_match`). Scalars and strips go to TensorBoard under `<out>/tb/` (offline, no
account), with the training loss, grad norm and lr; to wandb too when it is installed and asked for. A failed
validation is logged (and its traceback written to `error.txt`) and training goes on, unless `validation_strict`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from longlive.eval.flicker import temporal_flickering
from longlive.eval.palette import foreground_fraction, palette_match
from longlive.eval.shapes import named_shape, shape_match
from longlive.filecheck import check_image
from longlive.infer.assemble import make_video
from longlive.infer.video import VideoRequest
from longlive.model.checkpoint import PREFIX
from longlive.output import write_text_atomic
from longlive.train.data import COLOURS

if TYPE_CHECKING:
    from longlive.train.trainer import ARTrainer

log = logging.getLogger("longlive.train.validation")

# The tiny task's two captions (README, tests/test_shipped_weights.py): one video each.
TINY_VALIDATION_PROMPTS = ("A red circle bounces on a grey background.", "A blue square bounces on a grey background.")
TRAIN_SCALARS = ("loss", "grad_norm", "lr")


def validation_prompts(model: str, prompts: list[str] | None) -> list[str]:
    """The fixed prompt set: `prompts` when given, else the preset's default (the tiny task's two captions)."""
    if prompts:
        return list(prompts)
    if model == "tiny":
        return list(TINY_VALIDATION_PROMPTS)
    raise ValueError(f"validation of the {model} preset needs its prompts (validation_prompts / --validation-prompt); "
                     f"only the tiny preset has a default set")


def video_metrics(frames: torch.Tensor, prompt: str, model: str) -> dict[str, float]:
    """Weight-free metrics of one generated video (uint8 [T, H, W, 3]); the procedural task's for the tiny preset."""
    out = {"temporal_flickering": temporal_flickering(frames)}
    if model == "tiny":
        grey = torch.tensor(COLOURS["grey"])
        out["palette_match"] = palette_match(frames, torch.tensor(list(COLOURS.values()), dtype=torch.uint8))
        out["foreground_fraction"] = foreground_fraction(frames, grey)
        if (kind := named_shape(prompt)) is not None:
            out["shape_match"] = shape_match(frames, kind, grey)
    return out


def mean_metrics(videos: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """Each metric's mean over the videos that have a finite value of it."""
    out = {}
    for name in names:
        vals = [v[name] for v in videos if isinstance(v.get(name), float) and math.isfinite(v[name])]
        if vals:
            out[name] = sum(vals) / len(vals)
    return out


def _start_tensorboard(log_dir: Path, purge_step: int | None) -> Any | None:
    """A SummaryWriter, or None with a warning when the tensorboard package (an optional extra; the device machines
    lack it) is not installed: strips and metrics are still written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional extra: needs the tensorboard package
    except ImportError:
        log.warning("validation: the tensorboard package is not installed (pip install 'longlive[tensorboard]'); "
                    "writing strips and metrics.json only")
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _start_wandb(out: Path, project: str, config: dict[str, Any]) -> tuple[Any, Any] | None:
    """(wandb module, run), or None with a warning when wandb is not installed (it is an optional extra)."""
    try:
        import wandb  # optional extra: wandb, absence -> a warning and TensorBoard only
    except ImportError:
        log.warning("wandb logging asked for but the wandb package is not installed (pip install 'longlive[wandb]'); "
                    "logging to TensorBoard only")
        return None
    run = wandb.init(project=project, name=out.name, dir=str(out), config=config, resume="allow")
    return wandb, run


class TrainingValidation:
    """The trainer's validation hook: `after_step` on every rank after each optimiser step, `close` at the end."""

    def __init__(self, trainer: ARTrainer):
        cfg = trainer.cfg
        mc = trainer.model.cfg
        self.trainer, self.cfg, self.model_name = trainer, cfg, mc.name
        self.prompts = validation_prompts(mc.name, cfg.validation_prompts)
        self.images = [Path(p) for p in cfg.validation_images]
        for image in self.images:  # opened, verified and decoded before the first step, not at the first validation
            check_image(image, "--validation-image")
        if self.images and len(self.images) not in (1, len(self.prompts)):
            raise ValueError(f"{len(self.images)} validation images for {len(self.prompts)} prompts: give one image, "
                             f"or one per prompt")
        if cfg.i2v and not self.images:
            raise ValueError("an i2v run validates image-to-video: give validation_images (--validation-image), one "
                             "for all prompts or one per prompt")
        self.frames = cfg.validation_frames or mc.window_frames
        if self.frames % mc.chunk_frames:
            raise ValueError(f"validation_frames={self.frames} is not a multiple of the {mc.name} chunk of "
                             f"{mc.chunk_frames} latent frames")
        self.root = trainer.out_dir / "validation"
        self.writer: Any | None = None
        self.wandb: tuple[Any, Any] | None = None
        if trainer.is_main:
            # purge_step drops what a killed run logged after the checkpoint this run resumes from (that step's own
            # scalars and validation were logged after its checkpoint was written: they stay)
            self.writer = _start_tensorboard(trainer.out_dir / "tb", trainer.step + 1 if trainer.step else None)
            if cfg.wandb:
                self.wandb = _start_wandb(trainer.out_dir, cfg.wandb_project, cfg.to_dict())

    def after_step(self, rec: dict[str, Any]) -> None:
        """Log the step's training scalars (on logged steps) and validate every `validate_every` steps."""
        step = int(rec["step"])
        if self.writer is not None and (step % self.cfg.log_every == 0 or step == self.cfg.train_steps):
            scalars = {f"train/{k}": float(rec[k]) for k in TRAIN_SCALARS if k in rec}
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            if self.wandb is not None:
                self.wandb[1].log(scalars, step=step)
        if step % self.cfg.validate_every == 0:
            self.validate(step)

    def weights(self) -> dict[str, torch.Tensor]:
        """The full generator state (collective under FSDP: every rank calls), EMA values over the live ones when
        `validation_ema`."""
        state = self.trainer._model_state()
        if self.cfg.validation_ema:
            state.update(self.trainer._ema_state())
        return state

    def validate(self, step: int) -> dict[str, Any] | None:
        """Generate the prompt set with the current weights on the main rank; returns what metrics.json holds (None
        elsewhere, or when the validation failed and `validation_strict` is off)."""
        if not (self.trainer.is_main or self.trainer.fsdp):  # without FSDP the main rank holds every weight
            return None
        state = self.weights()
        if not self.trainer.is_main:
            return None
        step_dir = self.root / f"step_{step}"
        dev = self.trainer.device
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                return self._generate(step, step_dir, state)
        except Exception as exc:
            if self.cfg.validation_strict:
                raise
            log.exception("validation at step %d failed; training goes on (validation_strict makes this fatal)", step)
            write_text_atomic(step_dir / "error.txt", traceback.format_exc())
            if self.writer is not None:
                self.writer.add_text("validation/error", f"step {step}: {type(exc).__name__}: {exc}", step)
                self.writer.flush()
            return None
        finally:
            (self.root / "generator.safetensors").unlink(missing_ok=True)
            if dev.type == "cuda":  # the generator copy is gone: give its memory back, keep the training peak
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)

    def _generator_file(self, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Path:
        """The weights as a published-layout generator file, in the dtype generation runs in."""
        path = self.root / "generator.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({PREFIX + k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        return path

    def _image(self, i: int) -> Path | None:
        if not self.images:
            return None
        return self.images[0] if len(self.images) == 1 else self.images[i]

    def _generate(self, step: int, step_dir: Path, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        t0 = time.perf_counter()
        dev = str(self.trainer.device)
        weights = self._generator_file(state, VideoRequest(model=self.model_name, frames=self.frames,
                                                           device=dev).torch_dtype)
        videos: list[dict[str, Any]] = []
        names: list[str] = []
        bar = tqdm(self.prompts, desc=f"validate @ step {step}", unit="video", leave=False,
                   disable=not self.cfg.progress)
        for i, prompt in enumerate(bar):
            image = self._image(i)
            req = VideoRequest(model=self.model_name, frames=self.frames, prompts=[prompt], seed=self.cfg.seed + i,
                               device=dev, checkpoint=weights, image=image, progress=False,
                               cache_dir=self.root / "prompt_embeddings")
            res = make_video(req, step_dir / str(i))
            if res.video is None:
                raise RuntimeError(f"validation video {i} was not decoded (decode={req.decode})")
            m = video_metrics(res.video, prompt, self.model_name)
            names += [k for k in m if k not in names]
            videos.append({"prompt": prompt, "seed": req.seed, "image": str(image) if image else None,
                           **{k: f"{i}/{v}" for k, v in res.artifacts.items()}, **m})
        bar.close()
        result = {"step": step, "weights": "ema" if self.cfg.validation_ema else "live", "frames": self.frames,
                  "seconds": time.perf_counter() - t0, "mean": mean_metrics(videos, names), "videos": videos}
        write_text_atomic(step_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
        self._log(step, step_dir, result)
        log.info("validation at step %d: %s (%.1f s)", step,
                 ", ".join(f"{k} {v:.4f}" for k, v in result["mean"].items()), result["seconds"])
        return result

    def _log(self, step: int, step_dir: Path, result: dict[str, Any]) -> None:
        """Scalars (means, then per video) and strips to TensorBoard, and to wandb when it runs."""
        scalars = {f"validation/{k}": v for k, v in result["mean"].items()}
        scalars["validation/seconds"] = result["seconds"]
        strips = {}
        for i, video in enumerate(result["videos"]):
            scalars.update({f"validation/{i}/{k}": video[k] for k in result["mean"] if isinstance(video.get(k), float)})
            if "strip" in video:
                strips[f"validation/{i}/strip"] = step_dir / video["strip"]
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            for tag, path in strips.items():
                self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")
            self.writer.flush()
        if self.wandb is not None:
            wandb, run = self.wandb
            run.log({**scalars, **{tag: wandb.Image(str(path)) for tag, path in strips.items()}}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb[1].finish()


def start_validation(trainer: ARTrainer) -> TrainingValidation | None:
    """The hook `ARTrainer.run` calls after every step, or None when `validate_every` is 0 (then nothing is written)."""
    return TrainingValidation(trainer) if trainer.cfg.validate_every > 0 else None
