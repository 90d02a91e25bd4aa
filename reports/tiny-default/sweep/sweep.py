"""One variant of the tiny-default recipe, trained by `train_tiny` under a wall-clock budget (issue 6 sweep).

    python reports/tiny-default/sweep/sweep.py VARIANT --minutes 8 --work /tmp/sweep --keep $OUT

A variant is a set of overrides of the recipe's task (longlive.train.tiny.TinyRecipe) and of the tiny preset's shapes
(longlive.model.presets, applied in this process before training, so generation in the same process sees them).
Variants run side by side on the device machine's CPU cores (2 threads each, like the 2-core machine the tiny
default is meant for); only their relative results mean something, since the cores are not ours.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

# Every variant overrides run16's task (the default before this sweep), whatever TinyRecipe's defaults are now.
RUN16_TASK = {"backgrounds": ("grey",), "max_shapes": 1, "radius": (0.26, 0.32), "colour_change": 0.0}
SLOW = {"speed": (0.08, 0.2)}  # run19's slower shapes
VARIANTS: dict[str, dict] = {
    "run19": {"task": SLOW},
    "patch1": {"task": SLOW, "preset": {"patch_size": (1, 1, 1)}},
    "layers4": {"task": SLOW, "preset": {"num_layers": 4}},
    "centre": {"task": {**SLOW, "start_spread": 0.0}},
    "spread03": {"task": {**SLOW, "start_spread": 0.3}},
    "patch1-centre": {"task": {**SLOW, "start_spread": 0.0}, "preset": {"patch_size": (1, 1, 1)}},
    "layers4-centre": {"task": {**SLOW, "start_spread": 0.0}, "preset": {"num_layers": 4}},
    "run16-patch1": {"task": {}, "preset": {"patch_size": (1, 1, 1)}},
    # round 2: start spread around round 1's best (0.3), a second seed, and the speed it needs
    "run19-s1": {"task": SLOW, "seed": 1},
    "spread03-s1": {"task": {**SLOW, "start_spread": 0.3}, "seed": 1},
    "centre-s1": {"task": {**SLOW, "start_spread": 0.0}, "seed": 1},
    "spread015": {"task": {**SLOW, "start_spread": 0.15}},
    "spread05": {"task": {**SLOW, "start_spread": 0.5}},
    "spread03-fast": {"task": {"start_spread": 0.3}},
    "spread03-mid": {"task": {"speed": (0.15, 0.35), "start_spread": 0.3}},
    "spread03-big": {"task": {**SLOW, "start_spread": 0.3, "radius": (0.3, 0.36)}},
    # round 3: round 2's best (spread 0.15) on more seeds, its neighbours, and faster motion with it
    "spread015-s1": {"task": {**SLOW, "start_spread": 0.15}, "seed": 1},
    "spread015-s2": {"task": {**SLOW, "start_spread": 0.15}, "seed": 2},
    "spread01": {"task": {**SLOW, "start_spread": 0.1}},
    "spread02": {"task": {**SLOW, "start_spread": 0.2}},
    "spread015-mid": {"task": {"speed": (0.15, 0.35), "start_spread": 0.15}},
    "spread015-mid-s1": {"task": {"speed": (0.15, 0.35), "start_spread": 0.15}, "seed": 1},
    "spread015-fast": {"task": {"start_spread": 0.15}},
    "spread0-mid": {"task": {"speed": (0.15, 0.35), "start_spread": 0.0}},
}


def apply(variant: dict):
    """The variant's recipe; its preset overrides are applied to the tiny preset in this process."""
    import longlive.model.presets as P
    from longlive.train.tiny import TinyRecipe

    if variant.get("preset"):
        P.PRESETS["tiny"] = P.PRESETS["tiny"].with_overrides(**variant["preset"])
    return TinyRecipe(**{**RUN16_TASK, **variant.get("task", {})})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=None, help="fewer training clips (a plumbing check)")
    ap.add_argument("--eval-seeds", type=int, default=None)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--keep", type=Path, required=True, help="small results (eval, strips, weights) land here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from longlive.train.tiny import train_tiny

    recipe = apply(VARIANTS[args.variant])
    work, keep = args.work / args.variant, args.keep / args.variant
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "variant.json").write_text(json.dumps({"variant": args.variant, **VARIANTS[args.variant],
                                                   "minutes": args.minutes, "threads": args.threads}, default=str))
    result = train_tiny(work, minutes=args.minutes, seed=VARIANTS[args.variant].get("seed", 0), recipe=recipe,
                        samples=args.samples, eval_seeds=args.eval_seeds)
    for name in ("tiny_eval.json", "vae_reconstruction.png", "model_bf16.pt", "model_2step.pt", "vae.safetensors",
                 "text_encoder.safetensors"):
        if (work / name).exists():
            shutil.copy2(work / name, keep / name)
    for strip in (work / "samples").glob("*/strip.png"):
        shutil.copy2(strip, keep / f"strip_{strip.parent.name}.png")
    ev = result["eval"]
    print(json.dumps({k: {m: v.get(m) for m in ("prompt_colour_match", "shape_match", "shape_iou")}
                      for k, v in ev.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
