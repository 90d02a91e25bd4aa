"""How far do generated shapes move, and what happens past the training length? (issue 6, session 7)

    python reports/tiny-default/probes/motion_and_length.py WEIGHTS_DIR OUT_DIR

1. Motion: the foreground centroid's displacement from frame 0, over 61 frames, for 4-step generations
   (3 prompts × 4 seeds, the tiny default's evaluation seeds) and for 12 real clips of the training task.
2. Length: one 4-step generation per prompt at 60 latents (237 frames, ~10 s; training clips are 8 latents):
   per-frame foreground fraction and stray pixels (foreground pixels outside the largest blob's bounding box
   grown by 8 px), plotted against the frame index.
Writes motion_and_length.json and length.png to OUT_DIR.
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from longlive.eval.palette import foreground_mask  # noqa: E402
from longlive.eval.shapes import foreground_centroids  # noqa: E402
from longlive.infer.video import VideoRequest, make_video  # noqa: E402
from longlive.train.data import COLOURS, ProceduralVideos  # noqa: E402
from longlive.train.tiny import EVAL_PROMPTS, EVAL_SEEDS, TinyRecipe  # noqa: E402

TINY_TASK = TinyRecipe().task

w, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
grey = torch.tensor(COLOURS["grey"])


def fg_mask(frames: torch.Tensor) -> torch.Tensor:
    return foreground_mask(frames, grey)  # [T, H, W]


def centroids(frames: torch.Tensor) -> torch.Tensor:
    return foreground_centroids(frames, grey, min_area=0.0).float()  # [T, 2] (x, y); NaN for an empty frame


def displacement(frames: torch.Tensor) -> dict:
    c = centroids(frames)
    d = (c - c[:1]).norm(dim=-1)
    return {"max_px": d.max().item(), "final_px": d[-1].item(),
            "path_px": (c[1:] - c[:-1]).norm(dim=-1).sum().item()}


def req(prompt: str, seed: int, latents: int) -> VideoRequest:
    return VideoRequest(preset="tiny", frames=latents, prompts=[prompt], steps=4, seed=seed,
                        checkpoint=w / "model_bf16.pt", vae=w / "vae.safetensors",
                        text_encoder=w / "text_encoder.safetensors", progress=False)


gen_moves = []
for i, prompt in enumerate(EVAL_PROMPTS):
    for seed in range(EVAL_SEEDS):
        r = make_video(req(prompt, 100 * i + seed, 16), out / "motion" / f"{i}-{seed}")
        gen_moves.append(displacement(r["video_uint8"]))
real = ProceduralVideos(128, 128, 24, seed=0, **TINY_TASK)
real_moves = [displacement(real.clip(20_000 + k, 61)[0]) for k in range(12)]


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


long = {}
fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
for i, prompt in enumerate(EVAL_PROMPTS):
    r = make_video(req(prompt, 100 * i, 60), out / "long" / str(i))
    frames = r["video_uint8"]
    m = fg_mask(frames)
    fg = m.float().mean((1, 2))
    stray = []
    cs = centroids(frames).nan_to_num(0.0)  # an empty frame has no stray pixels wherever its box is
    for t in range(m.shape[0]):  # foreground outside the shape's neighbourhood: the noise chunks
        c = cs[t]
        box = torch.zeros_like(m[t])
        x0, y0 = int(c[0]), int(c[1])
        box[max(0, y0 - 56) : y0 + 56, max(0, x0 - 56) : x0 + 56] = True
        stray.append((m[t] & ~box).float().sum().item() / (~box).float().sum().clamp_min(1).item())
    long[prompt] = {"frames": int(frames.shape[0]), "foreground_fraction": fg.tolist(), "stray_fraction": stray}
    axes[0].plot(fg.numpy(), label=prompt.split(" bounces")[0])
    axes[1].plot(stray, label=prompt.split(" bounces")[0])
for ax, lab in zip(axes, ("foreground fraction", "stray foreground (outside 112 px box)"), strict=True):
    ax.set_ylabel(lab)
    ax.grid(alpha=0.3)
    for k in range(8, 60, 8):  # training clips are 8 latents = 29 frames
        ax.axvline(1 + 4 * (k - 1), color="grey", lw=0.5, ls=":")
axes[1].set_xlabel("frame (dotted: every 8 latents, the training clip length)")
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "length.png", dpi=110)
res = {"motion_61_frames": {"generated_4step": {k: mean(gen_moves, k) for k in gen_moves[0]},
                            "real_clips": {k: mean(real_moves, k) for k in real_moves[0]},
                            "n_generated": len(gen_moves), "n_real": len(real_moves)},
       "long_60_latents": long}
(out / "motion_and_length.json").write_text(json.dumps(res, indent=1))
print(json.dumps(res["motion_61_frames"], indent=1))
for p, v in long.items():
    s = v["stray_fraction"]
    print(p, "stray mean by 29-frame window:", [round(sum(s[a : a + 29]) / len(s[a : a + 29]), 4)
                                                 for a in range(0, len(s), 29)])
