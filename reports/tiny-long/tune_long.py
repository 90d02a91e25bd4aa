"""Tune tiny weights for long video: teacher forcing on long procedural clips through the inference KV window.

    python reports/tiny-long/tune_long.py --out /tmp/tl/a --minutes 4 --latents 60 --clips 200 [--no-tf-window]

Starts from the shipped tiny weights (or --base ROOT, a LONGLIVE_WEIGHTS root), encodes `--clips` single-shot clips
of `--latents` latents with the shipped codec and text encoder, runs `longlive.train.tiny.tune_long` for `--minutes`,
and writes a LONGLIVE_WEIGHTS root: OUT/tiny/{model_bf16.pt, vae.safetensors, text_encoder.safetensors} plus
OUT/tune.json (the knobs, the trainer summary and a manifest). Evaluate it with long_eval.py --weights OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from longlive.measure.manifest import manifest
from longlive.model.checkpoint import load_generator, save_generator
from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.text import build_text_encoder
from longlive.train.data import ProceduralVideos
from longlive.train.tiny import TinyRecipe, long_samples, tune_long
from longlive.weights import default_paths, load_vae_for


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", type=Path, default=None, help="a LONGLIVE_WEIGHTS root to start from (default: shipped)")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--latents", type=int, default=60)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tf-window", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--steps", type=int, default=None, help="fix the step count instead of planning it from --minutes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tiny-long-cache"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = get_preset("tiny")
    paths = default_paths(cfg, a.base)
    src = paths.vae.parent
    vae, _ = load_vae_for(cfg, paths.vae, explicit=True)
    text = build_text_encoder("tiny", checkpoint=paths.text, device="cpu")
    gen = ProceduralVideos(cfg.height, cfg.width, cfg.fps, seed=a.seed, **TinyRecipe().task)
    samples = long_samples(gen, vae, text, a.cache / f"L{a.latents}", latents=a.latents, n=a.clips, progress=True)
    print(f"[tune_long] {len(samples)} clips of {a.latents} latents encoded in {time.perf_counter() - t0:.0f} s",
          flush=True)
    model = build_model(cfg)
    load_generator(model, paths.generator)
    dest = a.out / "tiny"
    dest.mkdir(parents=True, exist_ok=True)
    summary = tune_long(model, samples, a.out / "run", seconds=60 * a.minutes, lr=a.lr, seed=a.seed,
                        tf_window=a.tf_window, steps=a.steps)
    save_generator(model, dest / "model_bf16.pt")
    for name in ("vae.safetensors", "text_encoder.safetensors", "vae_stats.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    knobs = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    (a.out / "tune.json").write_text(json.dumps({"knobs": knobs, "summary": summary,
                                                 "manifest": manifest(knobs, a.seed)}, indent=1, default=str))
    print(f"[tune_long] done in {(time.perf_counter() - t0) / 60:.1f} min: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
