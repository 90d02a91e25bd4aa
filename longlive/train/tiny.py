"""The tiny default: train every component of the `tiny` preset on procedural video, on CPU, in minutes.

    longlive train --model tiny --tiny-default [--minutes 14] [--out DIR]

1. the autoencoder: the tiny preset's linear patch codec (`longlive.vae.pca_codec`), fitted in closed form to
   procedural clips in seconds — the Wan2.2 VAE graph at tiny widths does not learn the shapes on 2 CPU cores in
   minutes (reports/tiny-default run1–3; `vae_train` still trains it);
2. the tiny umT5 text encoder: its seeded initialisation, optionally given caption semantics by a few seconds of
   bag-of-words pretraining on the training captions (`TinyRecipe.text_pretrain_steps`, `longlive.text.pretrain`);
3. the AR model by teacher forcing on cached latents of procedural clips;
4. a 2-step LoRA by DMD on top of it, merged into its own checkpoint.
Weights land in LONGLIVE_WEIGHTS/tiny (where `longlive generate --model tiny` and `make reproduce` look), with
`tiny_eval.json`: palette match (fraction of pixels on the procedural palette; 1.0 for real clips) and temporal
flickering of generations for 4-step, 2-step (LoRA) and NVFP4-quantised variants, plus frame strips; and the
VAE's reconstruction PSNR / palette match on a held-out 61-frame clip with `vae_reconstruction.png` (top: the
clip, bottom: its reconstruction).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from longlive.eval.flicker import temporal_flickering
from longlive.eval.palette import foreground_fraction, named_colours, palette_match, prompt_colour_match
from longlive.eval.shapes import centroid_travel, named_shape, shape_iou, shape_match
from longlive.infer.assemble import make_video
from longlive.infer.video import VideoRequest
from longlive.measure.manifest import manifest
from longlive.model.checkpoint import read_generator_file, save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.output import write_frame_strip, write_text_atomic
from longlive.quant.recipes import merge_lora
from longlive.text import EmbeddingCache, build_text_encoder
from longlive.text.pretrain import pretrain_bag_of_words
from longlive.text.tiny import save_tiny_text_encoder
from longlive.train.data import COLOURS, LatentCache, ProceduralDataset, ProceduralVideos, training_samples
from longlive.train.dmd import DMDConfig, DMDTrainer
from longlive.train.error_recycling import ErrorRecyclingConfig
from longlive.train.lora import load_lora, normalise_lora_keys
from longlive.train.trainer import ARTrainer, TrainConfig
from longlive.train.vae_train import reconstruction_quality
from longlive.vae import build_vae
from longlive.vae.pca_codec import fit_pca_codec, save_codec
from longlive.weights import SHIPPED_TINY


@dataclass(frozen=True)
class TinyRecipe:
    """Every knob of the tiny default, one typed value: `train_tiny(out, recipe=TinyRecipe(speed=(0.1, 0.2)))` runs a
    variant without touching module state. Defaults are the shipped recipe (run24 / run26)."""

    # The task. One large shape: at radius 26–32 % a shape spans 4–5 codec patches, so its interior is whole patches of
    # one colour and its outline is a larger share of what is drawn (run14; at 18–25 % the samples were clusters of
    # blocks). No mid-clip colour changes (the evaluation prompts have none): in 6-minute probes that alone raised
    # prompt-colour match from 0.56 to 0.67 and the prompted-shape IoU from 0.40 to 0.53 (run16). Shapes start at the
    # centre and move at 0.15-0.35 sides/s (run24): at high noise the denoiser predicts the mean over what it cannot
    # yet tell apart, and over start positions anywhere in the frame that mean is a round blob; from the centre it
    # keeps the corners. In the device CPU sweep (reports/tiny-default/sweep) narrowed starts raised the 4-step IoU
    # with the prompted shape from 0.27-0.34 to 0.55-0.77.
    backgrounds: tuple[str, ...] = ("grey",)
    max_shapes: int = 1
    radius: tuple[float, float] = (0.26, 0.32)
    colour_change: float = 0.0
    speed: tuple[float, float] = (0.15, 0.35)
    start_spread: float = 0.0
    samples: int = 1600  # distinct training clips (with 192, run5 memorised them)
    # Frame 0 coded as a still tube through the group basis, so latent 0 lives in the same space as the others (see
    # longlive.vae.pca_codec); with its own basis the first frames of runs 9 and 10 came out as noise.
    first_tube: bool = True
    ar_lr: float = 4e-3
    ar_batch: int = 1  # samples per AR step (TrainConfig.batch_size)
    # Error recycling (spec 04) puts the model's own recorded errors into its context, as at inference: run7's shapes
    # faded within a chunk or two of being drawn, the exposure bias it exists for.
    error_recycling: bool = True
    # From scratch, the first denoising step (pure noise, t = 999) sets what a chunk shows; the release's w(t) gives it
    # 0.3 % of the peak weight, and run9's first chunks stayed noise at 4, 16 and 48 steps alike.
    loss_weighting: str = "uniform"
    timestep_density: str = "table"  # TrainConfig.timestep_density
    # DMD's CFG scale for the 2-step LoRA (r = r_c + s·(r_c − r_u)). At the release's 3, run10's teacher (trained with
    # uniform weighting) flooded the frame with the prompt's colour: foreground 0.71 against the real clips' 0.09.
    dmd_guidance: float = 1.0
    # Bag-of-words pretraining of the tiny text encoder (longlive.text.pretrain; 0 = keep the seeded weights): with
    # the seeded byte-level encoder the shape word moved the first chunk a sixth as much as the colour word.
    text_pretrain_steps: int = 0
    ar_share: float = 0.7  # of the time left after the codec and the data; the 2-step LoRA gets the rest
    # Long video (issue 21, `tune_long`): after the 8-latent phase, teacher forcing on `long_clips` clips of
    # `long_latents` latents through the inference KV window (`tf_window`), for `long_share` of the AR time at
    # `long_lr` (the clips are encoded before the AR phase, out of the whole budget). The 8-latent clips fit inside
    # the window, so without it the model never sees a chunk far from its sink (reports/tiny-long). 0 latents (the
    # shipped run26): no long phase. Off by default: added to
    # run26's weights it removed most of the drift at 60 latents, but inside the 14-minute budget it takes its time
    # from the 8-latent phase and the LoRA, and the two from-scratch runs with it (run27: share 0.4, 200 clips, ar_share
    # 0.75; run28: share 0.3, 150 clips) lost short-clip quality and, for run28, long quality too
    # (reports/tiny-long/README.md, "Training for long video").
    long_latents: int = 0
    long_clips: int = 200
    long_share: float = 0.4
    long_lr: float = 1e-3
    # Long clips mixed into the 8-latent phase from its start instead (or as well): this share of its samples are
    # long clips, through the window. A 60-latent step carries 7.5× the frames of an 8-latent one for about 3.5× the
    # time, and the whole schedule sees them. run29 (0.1, 150 clips): the fewest strays of any weights (0.0047 at 60
    # latents) but run26's drift (−0.13 colour, −0.12 shape) and weaker shapes, so off by default.
    long_mix: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.long_share < 1.0 and 0.0 <= self.long_mix < 1.0):
            raise ValueError(f"long_share={self.long_share} and long_mix={self.long_mix} must lie in [0, 1)")
        if self.long_mix and not self.long_latents:
            raise ValueError("long_mix mixes long clips into the 8-latent phase: set long_latents (e.g. 60) too")
        if self.long_mix and self.ar_batch != 1:
            raise ValueError(f"long_mix needs ar_batch 1 (a batch holds clips of one length), got {self.ar_batch}")

    @property
    def task(self) -> dict:
        """The ProceduralVideos knobs of the task."""
        return {"backgrounds": self.backgrounds, "max_shapes": self.max_shapes, "radius": self.radius,
                "colour_change": self.colour_change, "speed": self.speed, "start_spread": self.start_spread}

    def as_dict(self) -> dict:
        """JSON-ready, as recorded next to the weights it made: {"task": {...}, "samples": ..., ...}."""
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"task": {k: plain.pop(k) for k in self.task}, **plain}


TINY_ERROR_RECYCLING = ErrorRecyclingConfig(p_clean_record=1.0, replacement="oldest")
"""The shipped weights' error recycling: every clean step recorded, full buckets overwritten oldest first (the
release's 0.1 and random replacement came later; pinned so that the recipe reproduces the shipped run)."""

RETRAIN_COMMAND = ("longlive train --model tiny --tiny-default --out DIR  (2 CPU cores, 14 min), then "
                   "python -m longlive.train.tiny ship DIR")
# What `ship` copies into the package (longlive/assets/tiny): generator pickles become safetensors.
SHIPPED = {"model_bf16.pt": "model_bf16.safetensors", "model_2step.pt": "model_2step.safetensors",
           "vae.safetensors": "vae.safetensors", "vae_stats.json": "vae_stats.json",
           "text_encoder.safetensors": "text_encoder.safetensors"}


def ship(src: Path, dest: Path | None = None, *, notes: str | None = None) -> dict:
    """Copy a finished `--tiny-default` run into the package's shipped weights (`longlive/assets/tiny`): generators as
    safetensors, the codec and text encoder as they are, and MANIFEST.json (commit, recipe, evaluation numbers,
    sha256 of every file, how to retrain). Files are written atomically; returns the manifest."""
    src, dest = Path(src), Path(dest or SHIPPED_TINY)
    evaluation = json.loads((src / "tiny_eval.json").read_text())
    missing = [n for n in SHIPPED if not (src / n).exists()]
    if missing:
        raise FileNotFoundError(f"{src} lacks {missing}: is it a finished `longlive train --tiny-default` run?")
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, shipped in SHIPPED.items():
        tmp = dest / f".{shipped}.tmp"
        if name.endswith(".pt"):
            sd, meta = read_generator_file(src / name)
            save_file({f"model.{k}": v.contiguous() for k, v in sd.items()}, str(tmp),
                      metadata={"checkpoint_format": str(meta.get("checkpoint_format", "")), "source": name})
        else:
            shutil.copyfile(src / name, tmp)
        tmp.replace(dest / shipped)
        data = (dest / shipped).read_bytes()
        files[shipped] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    man = {"what": "the tiny preset's trained weights (longlive train --model tiny --tiny-default)",
           "trained": evaluation.get("manifest", {}), "recipe": evaluation.get("manifest", {}).get("config", {}).get(
               "recipe", TinyRecipe().as_dict()),
           "minutes": evaluation.get("minutes"), "ar_steps": evaluation.get("ar_steps"),
           "lora_steps": (evaluation.get("lora") or {}).get("steps"), "vae_reconstruction":
               evaluation.get("vae_reconstruction"), "eval": evaluation.get("eval"), "metric": evaluation.get("metric"),
           "files": files, "retrain": RETRAIN_COMMAND, "notes": notes}
    write_text_atomic(dest / "MANIFEST.json", json.dumps(man, indent=1, default=str) + "\n")
    return man


def _log(msg: str) -> None:
    print(f"[tiny] {msg}", flush=True)


def train_tiny(out: Path, *, minutes: float = 14.0, seed: int = 0, recipe: TinyRecipe | None = None,
               samples: int | None = None,
               codec_clips: int = 128, eval_seeds: int | None = None) -> dict:
    """The whole recipe under a wall-clock budget; `samples` / `codec_clips` / `eval_seeds` shrink it for tests."""
    t_start = time.perf_counter()
    r = recipe or TinyRecipe()
    budget = minutes * 60
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    # The tiny default learns a narrowed procedural task (TinyRecipe.task): a grey background, one shape of radius
    # 26–32 % (the full distribution — 10 backgrounds, up to 3 smaller shapes — stays the data generator's default).
    gen = ProceduralVideos(cfg.height, cfg.width, cfg.fps, seed=seed, **r.task)

    # 1. autoencoder ------------------------------------------------------------------------------------------
    vae = build_vae(cfg.vae)
    codec_stats = fit_pca_codec(vae, (gen.clip(50_000 + i, 29)[0] for i in range(codec_clips)), log=_log,
                                first_tube=r.first_tube)
    save_codec(vae, out / "vae.safetensors")
    palette = torch.tensor(list(COLOURS.values()), dtype=torch.uint8)
    held_out = gen.clip(30_000, 61)[0]
    vae_quality, rec = reconstruction_quality(vae, held_out, palette)
    write_frame_strip(torch.cat([held_out, rec], dim=1), out / "vae_reconstruction.png", num=11)
    _log(f"vae reconstruction (held-out 61-frame clip): {json.dumps(vae_quality)}")

    frames = 4 * cfg.chunk_frames  # 8 latents = 29 frames per sample
    # 1600 distinct clips (≈ 40 s to render and encode): with 192 (run5) the model memorised them — held-out
    # teacher-forcing loss 0.79 against 0.53 on the training clips.
    ds = ProceduralDataset(gen, n_samples=samples or r.samples, shots=1, frames_per_shot=1 + 4 * (frames - 1))

    # 2. text encoder: seeded, then (text_pretrain_steps) a bag-of-words pretraining on the captions --------
    text = build_text_encoder("tiny", seed=seed, device="cpu")
    text_info: dict = {"pretrain_steps": 0}
    if r.text_pretrain_steps:
        captions = [c for i in range(len(ds)) for c in ds.captions(i)]
        text_info = pretrain_bag_of_words(text, captions, steps=r.text_pretrain_steps, seed=seed, log=_log)
    save_tiny_text_encoder(text, out / "text_encoder.safetensors")
    # Reloaded from the file, so the embedding cache is keyed by the saved weights, as at inference.
    text = build_text_encoder("tiny", checkpoint=out / "text_encoder.safetensors", device="cpu")

    # 3. AR teacher forcing -------------------------------------------------------------------------------------
    samples = list(training_samples(ds, vae, text, LatentCache(out / "cache" / "latents"),
                                    EmbeddingCache(out / "cache" / "text"), num_latents=frames))
    _log(f"encoded {len(samples)} training samples ({time.perf_counter() - t_start:.0f} s so far)")
    model = build_model(cfg, seed=seed)
    long: list[dict] = []
    if r.long_latents and (r.long_mix or r.long_share):  # clips only where a phase trains on them
        t_long = time.perf_counter()
        long = long_samples(gen, vae, text, out / "cache" / f"long{r.long_latents}", latents=r.long_latents,
                            n=r.long_clips, progress=True)
        _log(f"long: {len(long)} clips of {r.long_latents} latents encoded in {time.perf_counter() - t_long:.0f} s")
    remaining = budget - (time.perf_counter() - t_start)
    long_seconds = r.long_share * r.ar_share * remaining if r.long_latents else 0.0
    ar_seconds = r.ar_share * remaining - long_seconds
    t_ar = time.perf_counter()
    # From scratch, not the release's fine-tune: Adam with momentum, a high lr with warm-up and cosine decay
    # (lr 4e-3 reached in 150 s the held-out loss run5 reached in 11 min), and 10 % empty-prompt samples so the
    # DMD teacher's CFG against the empty prompt means something.
    probe_steps = 400
    trainer = ARTrainer(model, TrainConfig(train_steps=probe_steps, lr=r.ar_lr, batch_size=r.ar_batch,
                                           betas=(0.9, 0.99), lr_schedule="cosine",
                                           warmup_steps=200, lr_min_ratio=0.05, text_dropout=0.1,
                                           loss_weighting=r.loss_weighting, error_recycling=r.error_recycling,
                                           error_recycling_config=TINY_ERROR_RECYCLING,
                                           timestep_density=r.timestep_density,
                                           ema_start=10**9, ema_decay=0.999, ckpt_every=10**9, progress=True,
                                           resume=False, seed=seed, tf_window=bool(r.long_latents)),
                        _mixed(samples, long, r.long_mix), out / "ar")
    trainer.run()

    def plan(done_s: float) -> int:
        """Total AR steps that fit the AR budget, from the mean wall time per step so far (checkpoints, logging and
        error recycling's growing banks included): a median of the first steps mispredicted by 35 % (run6's
        first attempt), and by 25 % with error recycling (run8, whose LoRA got no time)."""
        per = (time.perf_counter() - t_ar) / trainer.step
        return trainer.step + max(10, int((ar_seconds - done_s) / per))

    # The cosine schedule has barely moved after warm-up, so fixing its length now costs nothing; it is fixed
    # again half-way, from the measured rate, and only its tail stretches or shrinks.
    steps = plan(time.perf_counter() - t_ar)
    trainer.cfg.train_steps, trainer.cfg.ema_start, trainer.cfg.ckpt_every = steps, steps // 2, max(50, steps // 4)
    trainer.run(until=steps // 2)
    steps = max(trainer.step + 10, plan(time.perf_counter() - t_ar))
    trainer.cfg.train_steps, trainer.cfg.ckpt_every = steps, max(50, steps // 4)
    summary = trainer.run()
    per_step = (time.perf_counter() - t_ar) / steps
    _take_ema(trainer)  # ship the EMA of the second half (averages out the constant-lr noise of the last steps)
    _log(f"AR: {steps} steps at {per_step:.2f} s/step; summary {summary}")
    long_info = None
    if r.long_latents and r.long_share:
        long_info = tune_long(model, long, out / "long", seconds=long_seconds, lr=r.long_lr, seed=seed)
        _log(f"long: {long_info['steps']} steps in {long_info['seconds']:.0f} s")
    save_generator(model, out / "model_bf16.pt")

    # 4. 2-step LoRA by DMD -------------------------------------------------------------------------------------
    lora_info = _train_lora(model, samples, out, seconds=budget - (time.perf_counter() - t_start) - 60, seed=seed,
                            guidance=r.dmd_guidance)

    # 5. evaluation ---------------------------------------------------------------------------------------------
    clips = [gen.clip(20_000 + i, 29) for i in range(4)]
    # Motion over the generated length (61 frames), on 12 clips: the evaluation's 3 prompts × 4 seeds.
    grey = torch.tensor(COLOURS["grey"])
    real_travel = [centroid_travel(gen.clip(20_000 + i, 61)[0], grey) for i in range(12)]
    real_col = [prompt_colour_match(c[0], named_colours(c[1]), grey) for c in clips]
    real_shape = [shape_match(c[0], named_shape(c[1]), grey) for c in clips]
    evals = {"procedural (real clips)": {"palette_match": palette_match(torch.cat([c[0] for c in clips]), palette),
                                         "prompt_colour_match": sum(real_col) / len(real_col),
                                         "shape_match": sum(real_shape) / len(real_shape),
                                         "foreground_fraction": foreground_fraction(torch.cat([c[0] for c in clips]),
                                                                                    grey),
                                         "centroid_travel_px": sum(real_travel) / len(real_travel)}}
    seeds = eval_seeds or EVAL_SEEDS
    evals.update(_evaluate(out, palette, seeds=seeds))
    result = {"manifest": manifest({"recipe": r.as_dict(), "minutes": minutes}, seed),
              "minutes": (time.perf_counter() - t_start) / 60, "vae": {"kind": "pca codec", **codec_stats},
              "vae_reconstruction": vae_quality, "text_encoder": text_info, "ar_steps": steps, "ar_summary": summary,
              "long": long_info,
              "lora": lora_info, "eval": evals,
              "metric": "palette_match: fraction of pixels within 24/255 (L∞) of a procedural palette colour; "
                        "prompt_colour_match: fraction of foreground pixels (> 48/255 from the grey background) "
                        "within 48/255 of a colour the prompt names (first_frame_: frame 0 only, which no context "
                        "conditions); shape_match: fraction of frames whose foreground best overlaps (IoU) the "
                        "prompted kind's template of the same area and centroid (longlive.eval.shapes); shape_iou: "
                        "mean IoU with that template; centroid_travel_px: largest distance of the foreground "
                        "centroid from frame 0's (real clips: 12 of 61 frames); foreground_fraction: fraction of "
                        "pixels > 48/255 from the background; temporal_flickering: VBench's definition; "
                        f"means over the prompts {list(EVAL_PROMPTS)} × {seeds} seeds each"}
    (out / "tiny_eval.json").write_text(json.dumps(result, indent=2, default=str))
    _log(f"done in {result['minutes']:.1f} min: {json.dumps(evals)}")
    return result


@torch.no_grad()
def _take_ema(trainer: ARTrainer) -> None:
    """Copy the trainer's EMA weights into its model's parameters."""
    for p, e in zip(trainer.params, trainer.ema, strict=True):
        p.copy_(e.to(p.dtype))


def long_samples(gen: ProceduralVideos, vae, text, cache: Path, *, latents: int, n: int,
                 progress: bool = False) -> list[dict]:
    """`n` single-shot procedural clips of `latents` latent frames, encoded once (cached under `cache`): the long
    clips that `tune_long` trains on."""
    ds = ProceduralDataset(gen, n_samples=n, shots=1, frames_per_shot=1 + 4 * (latents - 1))
    return list(training_samples(ds, vae, text, LatentCache(cache / "latents"), EmbeddingCache(cache / "text"),
                                 num_latents=latents, progress=progress))


def tune_long(model, samples: list[dict], out: Path, *, seconds: float, lr: float, seed: int = 0,
              tf_window: bool = True, probe_steps: int = 20, progress: bool = True,
              steps: int | None = None) -> dict:
    """Teacher forcing on long clips through the inference KV window (`TrainConfig.tf_window`), with error recycling
    as in the short phase, for `seconds` of wall time: a short warm-up, a cosine to 10 % and the EMA of the second
    half, copied into `model`. The step count is planned from the first `probe_steps` steps (re-planned half-way),
    unless `steps` fixes it (comparable experiments on a shared machine). Returns the summary.

    Why: the short phase's 8-latent clips fit inside the window, so the model never sees a chunk far (in RoPE
    positions) from its sink, nor a window whose chunks are newer than the sink by more than a few latents — the
    context of every chunk after the fourth at generation (reports/tiny-long: the stray bursts' timing follows that
    distance)."""
    t0 = time.perf_counter()
    cfg = TrainConfig(train_steps=10**6, lr=lr, batch_size=1, betas=(0.9, 0.99), lr_schedule="cosine",
                      warmup_steps=min(50, probe_steps), lr_min_ratio=0.1, text_dropout=0.1,
                      loss_weighting=TinyRecipe.loss_weighting, error_recycling=True,
                      error_recycling_config=TINY_ERROR_RECYCLING, timestep_density=TinyRecipe.timestep_density,
                      tf_window=tf_window, ema_start=10**9, ema_decay=0.995, ckpt_every=10**9, progress=progress,
                      resume=False, seed=seed)
    trainer = ARTrainer(model, cfg, itertools.cycle(samples), out)
    fixed = steps
    trainer.run(until=probe_steps)
    t_probe = time.perf_counter()
    per = (t_probe - t0) / probe_steps  # first steps include one-off costs: re-planned half-way
    steps = fixed or max(probe_steps + 10, int(seconds / per))
    trainer.cfg.train_steps, trainer.cfg.ema_start = steps, steps // 2
    trainer.run(until=steps // 2)
    if fixed is None:
        # the rate since the probe, where steps were taken since (a short budget's half-way point can fall inside
        # the probe: a rate over no steps planned 1,355 steps for a 2 s phase)
        if trainer.step > probe_steps:
            per = (time.perf_counter() - t_probe) / (trainer.step - probe_steps)
        steps = max(trainer.step + 10, trainer.step + int((seconds - (time.perf_counter() - t0)) / per))
        trainer.cfg.train_steps = steps
    summary = trainer.run()
    _take_ema(trainer)
    return {**summary, "steps": steps, "seconds": time.perf_counter() - t0, "latents": samples[0]["latents"].shape[2],
            "clips": len(samples), "lr": lr, "tf_window": tf_window}


def _mixed(short: list[dict], long: list[dict], share: float):
    """The 8-latent phase's samples: the short clips in a cycle, with every round(1 / share)-th sample a long clip
    (their own cycle) when `share` > 0."""
    if not share:
        yield from itertools.cycle(short)
        return
    every = max(1, round(1 / share))
    shorts, longs = itertools.cycle(short), itertools.cycle(long)
    for i in itertools.count(1):
        yield next(longs) if i % every == 0 else next(shorts)


def _train_lora(model, samples, out: Path, *, seconds: float, seed: int, guidance: float) -> dict:
    """A few DMD steps with a LoRA generator (2-step target); merged into model_2step.pt."""
    if seconds < 20:
        _log("LoRA: skipped (no time left in the budget)")
        return {"steps": 0}
    base = copy.deepcopy(model)
    prompts = itertools.cycle([s["prompt_embeds"][:1] for s in samples])
    dmd = DMDTrainer(base, DMDConfig(frames=2 * model.cfg.chunk_frames, steps=4, lora_rank=8, lora_alpha=8, seed=seed,
                                     lr=1e-4, lr_critic=1e-4, real_guidance_scale=guidance), prompts, out / "lora")
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        dmd.step()
        n += 1
    path = dmd.save() or out / "lora" / "lora.pt"
    lora = load_lora(path)
    merged = copy.deepcopy(model)
    merge_lora(merged, normalise_lora_keys(lora["generator_lora"]), scale=lora.get("lora_alpha", 8) /
               lora.get("lora_rank", 8))
    save_generator(merged, out / "model_2step.pt", checkpoint_format="longlive_generator_merged_lora",
                   merged_lora=True)
    _log(f"LoRA: {n} DMD steps -> {path}")
    return {"steps": n, "path": str(path)}


EVAL_PROMPTS = ("A red circle bounces on a grey background.", "A blue square bounces on a grey background.",
                "A yellow triangle bounces on a grey background.")
# Seeds per prompt: with one, the 4-step prompt-colour match of two runs of the same recipe differed by 0.4
# (runs 10 and 11); the strips show seed 0.
EVAL_SEEDS = 4


def _evaluate(out: Path, palette: torch.Tensor, seeds: int = EVAL_SEEDS) -> dict:
    """Each variant on EVAL_PROMPTS × EVAL_SEEDS: palette match, prompt-colour match, foreground fraction and
    temporal flickering averaged over all of them, and one strip per variant with a row per prompt (seed 0)."""
    runs = {"4-step": {}, "2-step (LoRA)": {"steps": 2, "checkpoint": out / "model_2step.pt"},
            "4-step NVFP4 W4A4 + NVFP4 KV": {"linear_quant": "nvfp4", "kv_quant": "nvfp4"}}
    grey = torch.tensor(COLOURS["grey"])
    res = {}
    for name, kw in runs.items():
        if "checkpoint" in kw and not Path(kw["checkpoint"]).exists():
            continue
        tag = name.split(" ")[0] + ("-lora" if "LoRA" in name else "") + ("-nvfp4" if "NVFP4" in name else "")
        pal, col, col0, fg, flick, fps, rows, shp, iou, mov = [], [], [], [], [], [], [], [], [], []
        for i, prompt in enumerate(EVAL_PROMPTS):
            for seed in range(seeds):
                req = VideoRequest(model="tiny", frames=16, prompts=[prompt], steps=kw.get("steps", 4),
                                   seed=100 * i + seed, checkpoint=kw.get("checkpoint", out / "model_bf16.pt"),
                                   vae=out / "vae.safetensors", text_encoder=out / "text_encoder.safetensors",
                                   linear_quant=kw.get("linear_quant", "none"), kv_quant=kw.get("kv_quant", "none"),
                                   progress=False)
                where = out / "samples" / tag / (str(i) if seed == 0 else f"{i}-{seed}")
                r = make_video(req, where)
                frames = r.video
                pal.append(palette_match(frames, palette))
                col.append(prompt_colour_match(frames, named_colours(prompt), grey))
                col0.append(prompt_colour_match(frames[:1], named_colours(prompt), grey))  # the unconditioned chunk
                fg.append(foreground_fraction(frames, grey))
                kind = named_shape(prompt)
                shp.append(shape_match(frames, kind, grey))
                iou.append(shape_iou(frames, kind, grey))
                mov.append(centroid_travel(frames, grey))
                flick.append(float(temporal_flickering(frames)))
                fps.append(r.metrics["denoise_fps"])
                if seed == 0:
                    rows.append(Image.open(where / "strip.png").convert("RGB"))
        sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 2 for r in rows) - 2), (255, 255, 255))
        y = 0
        for row in rows:
            sheet.paste(row, (0, y))
            y += row.height + 2
        sheet.save(out / "samples" / tag / "strip.png")

        def mean(xs: list[float]) -> float:
            xs = [x for x in xs if x == x]  # NaN: nothing drawn
            return sum(xs) / len(xs) if xs else float("nan")

        def per_prompt(xs: list[float]) -> list[float]:
            return [mean(xs[i * seeds:(i + 1) * seeds]) for i in range(len(EVAL_PROMPTS))]

        res[name] = {"palette_match": mean(pal), "prompt_colour_match": mean(col),
                     "first_frame_prompt_colour_match": mean(col0), "shape_match": mean(shp),
                     "shape_iou": mean(iou), "foreground_fraction": mean(fg),
                     "temporal_flickering": mean(flick), "denoise_fps": mean(fps), "centroid_travel_px": mean(mov),
                     "per_prompt": {"palette_match": per_prompt(pal), "prompt_colour_match": per_prompt(col),
                                    "shape_match": per_prompt(shp)},
                     "strip": str(out / "samples" / tag / "strip.png"),
                     "weight_rule": req.weight_rule if req.linear_quant == "nvfp4" else None}
    return res


def main(argv: list[str] | None = None) -> int:
    """`python -m longlive.train.tiny ship RUN_DIR [--dest DIR] [--notes TEXT]`."""
    ap = argparse.ArgumentParser(prog="python -m longlive.train.tiny", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("ship", help="copy a finished --tiny-default run into longlive/assets/tiny with its manifest")
    sp.add_argument("run", type=Path)
    sp.add_argument("--dest", type=Path, default=None)
    sp.add_argument("--notes", default=None)
    a = ap.parse_args(argv)
    man = ship(a.run, a.dest, notes=a.notes)
    print(json.dumps({k: man[k] for k in ("files", "minutes", "ar_steps", "lora_steps")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
