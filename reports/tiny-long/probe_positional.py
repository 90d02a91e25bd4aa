"""Are the shipped tiny model's stray blocks in long videos positional? (issue 21, part 3)

    python reports/tiny-long/probe_positional.py [--latents 60 240] [--seeds 4] [--out reports/tiny-long/results]
    python reports/tiny-long/probe_positional.py --analyse            # tables and plots from the saved curves

Generates 4-step videos with the shipped tiny weights for the tiny default's three evaluation prompts × `--seeds`
seeds (the evaluation's seeds 100·i + s), and measures the stray share of every frame (`longlive.eval.stray`). One
knob at a time moves away from the preset (sink 2, window 8 latents, absolute RoPE):
  (a) sink_frames 0 / 4;  (b) RoPE offsets: `gap+D` puts every chunk after the first D positions further from the
  sink (what `shot_rope_offset` adds after a cut, without the cut's prompt and pin), `shift+D` moves every position
  by D (a control: RoPE scores depend only on position differences), and a real cut at chunk 1 (the same caption
  with the scene-cut prefix) with shot_rope_offset 0 / 15;  (c) relative_rope;  (d) window_frames 6 / 12 / 16.
The RoPE offsets are applied by wrapping the model's `frame_offset`, which is where `generate` puts the shot offset.

Positional bursts happen at the same latent in every video whatever its prompt and seed; content-driven ones do not.
The analysis therefore reads (1) how alike the videos' curves are (mean pairwise correlation), (2) the amplitude
and phase of the mean curve at the period of the tiny model's second temporal RoPE frequency (2π / 10000^(−1/6) =
29.2 latents), (3) the lag that best aligns a setting's mean curve with the preset's. Writes curves.json,
summary.json, stray_per_frame.png and phase.png to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from longlive.eval.clips import clip_ranges  # noqa: E402
from longlive.eval.loading import load_frames  # noqa: E402
from longlive.eval.palette import COLOURS  # noqa: E402
from longlive.eval.stray import blend_distance, prompt_colours, stray_per_frame, stray_share_for_prompt  # noqa: E402
from longlive.infer.assemble import build, run  # noqa: E402
from longlive.infer.video import VideoRequest  # noqa: E402
from longlive.model.presets import get_preset  # noqa: E402
from longlive.output import write_mp4  # noqa: E402
from longlive.text.prompts import SCENE_CUT_PREFIX  # noqa: E402
from longlive.train.data import ProceduralVideos  # noqa: E402
from longlive.train.tiny import EVAL_PROMPTS, TinyRecipe  # noqa: E402
from longlive.weights import SHIPPED_TINY, load_vae_for  # noqa: E402

CFG = get_preset("tiny")
FPS = CFG.fps
TIME_PAIRS = (CFG.dim // CFG.num_heads - 4 * (CFG.dim // CFG.num_heads // 6)) // 2  # rope.axis_pairs: 6 at head_dim 32
PERIOD_LATENTS = 2 * math.pi / 10000.0 ** (-2 / (2 * TIME_PAIRS))  # the second time frequency's period: 29.2

# name -> (VideoRequest overrides, (shift of chunk 0, shift of later chunks) added to frame_offset, cut at chunk 1)
SETTINGS: dict[str, tuple[dict, tuple[int, int], bool]] = {
    "preset (sink 2, window 8)": ({}, (0, 0), False),
    "sink 0": ({"sink_frames": 0}, (0, 0), False),
    "sink 4": ({"sink_frames": 4}, (0, 0), False),
    "gap+8": ({}, (0, 8), False),
    "gap+15": ({}, (0, 15), False),
    "shift+15": ({}, (15, 15), False),
    "cut@1, shot_rope_offset 0": ({"shot_rope_offset": 0}, (0, 0), True),
    "cut@1, shot_rope_offset 15": ({"shot_rope_offset": 15}, (0, 0), True),
    "relative_rope": ({"relative_rope": True}, (0, 0), False),
    "window 6": ({"window_frames": 6}, (0, 0), False),
    "window 12": ({"window_frames": 12}, (0, 0), False),
    "window 16": ({"window_frames": 16}, (0, 0), False),
}


def offset_model(model: torch.nn.Module, first: int, later: int) -> None:
    """Add `first` to chunk 0's temporal RoPE start and `later` to every later chunk's (a no-op for 0, 0)."""
    if (first, later) == (0, 0):
        return
    forward, cf = model.forward, CFG.chunk_frames

    def shifted(x, t, *args, frame_offset: int = 0, **kw):
        return forward(x, t, *args, frame_offset=frame_offset + (first if frame_offset < cf else later), **kw)

    model.forward = shifted


def generate_curves(latents: int, seeds: int, names: list[str]) -> dict:
    """{setting: {prompt: [per-frame stray shares of each seed]}} plus seconds per setting."""
    out: dict = {}
    for name in names:
        over, (first, later), cut = SETTINGS[name]
        t0 = time.perf_counter()
        rows: dict[str, list[list[float]]] = {}
        for i, prompt in enumerate(EVAL_PROMPTS):
            prompts = [prompt, SCENE_CUT_PREFIX + prompt] if cut else [prompt]
            base = VideoRequest(model="tiny", frames=latents, prompts=prompts, switch_at=[1] if cut else None,
                                steps=4, seed=100 * i, progress=False, **over)
            bg, obj = prompt_colours(prompt)
            rows[prompt] = []
            for s in range(seeds):
                pipe = build(dataclasses.replace(base, seed=100 * i + s))  # tiny: building is cheap
                offset_model(pipe.model, first, later)
                with tempfile.TemporaryDirectory() as tmp:
                    frames = run(pipe, Path(tmp)).video
                rows[prompt].append([round(v, 5) for v in stray_per_frame(frames, bg, obj).tolist()])
        out[name] = {"curves": rows, "seconds": time.perf_counter() - t0}
        mean = torch.tensor([c for r in rows.values() for c in r]).mean().item()
        print(f"[{latents} latents] {name}: mean stray {mean:.4f} ({out[name]['seconds']:.0f} s)", flush=True)
    return out


# ---- baseline: real clips, and the tolerance -----------------------------------------------------------------
BASELINE_TOLS = (16, 24, 32, 40, 48)


def baseline(clips: int = 12, frames: int = 61) -> dict:
    """Stray share of real clips of the tiny task (as rendered, through mp4, through the shipped codec, through
    both) and of the shipped model at 16 latents (the evaluation's length, 3 prompts × 4 seeds), at several
    tolerances; plus each third palette colour's distance from the evaluation prompts' blends."""
    gen = ProceduralVideos(CFG.height, CFG.width, FPS, seed=0, **TinyRecipe().task)
    vae, _ = load_vae_for(CFG, SHIPPED_TINY / "vae.safetensors")
    kinds: dict[str, list[tuple[torch.Tensor, str]]] = {"rendered": [], "mp4": [], "codec": [], "codec + mp4": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(clips):
            f, caption, _ = gen.clip(20_000 + k, frames)  # the tiny default's real-clip indices
            with torch.no_grad():
                rec = vae.decode(vae.encode(f.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None]))[0]
            rec = rec.permute(1, 2, 3, 0).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
            for name, x in (("rendered", f), ("codec", rec)):
                kinds[name].append((x, caption))
                write_mp4(x, Path(tmp) / "v.mp4", fps=FPS)
                via_mp4 = "mp4" if name == "rendered" else "codec + mp4"
                kinds[via_mp4].append((load_frames(Path(tmp) / "v.mp4"), caption))
    kinds["model, 16 latents"] = []
    for i, prompt in enumerate(EVAL_PROMPTS):
        for s in range(4):
            with tempfile.TemporaryDirectory() as tmp:
                req = VideoRequest(model="tiny", frames=16, prompts=[prompt], steps=4, seed=100 * i + s,
                                   progress=False)
                kinds["model, 16 latents"].append((run(build(req), Path(tmp)).video, prompt))
    out: dict = {"clips": clips, "frames": frames, "share": {}}
    for name, items in kinds.items():
        row = {}
        for tol in BASELINE_TOLS:
            v = [stray_share_for_prompt(x, c, tol) for x, c in items]
            row[str(tol)] = {"mean": round(sum(v) / len(v), 5), "max": round(max(v), 5)}
        per_pixel = [stray_share_for_prompt(x, c, pool=1) for x, c in items]
        row["pool 1, tol 40"] = {"mean": round(sum(per_pixel) / len(per_pixel), 5), "max": round(max(per_pixel), 5)}
        out["share"][name] = row
    third = {}
    for prompt in EVAL_PROMPTS:
        bg, obj = prompt_colours(prompt)
        d = {}
        for name, rgb in COLOURS.items():
            c = torch.tensor(rgb, dtype=torch.float32)
            if torch.equal(c, bg.float()) or torch.equal(c, obj[0].float()):
                continue
            half = ((c + bg.float()) / 2).round()
            x = torch.stack([c, half]).to(torch.uint8).reshape(2, 1, 1, 3).expand(2, 2, 2, 3).contiguous()
            full_d, half_d = blend_distance(x, bg, obj)[:, 0, 0].tolist()
            d[name] = {"full": round(full_d, 1), "half": round(half_d, 1)}
        third[prompt.split(" bounces")[0]] = d
    out["third_colour_distance"] = third
    return out


# ---- analysis -------------------------------------------------------------------------------------------------
def latent_of_frame(frames: int) -> torch.Tensor:
    """Latent index each video frame decodes from (latent 0 → frame 0, latent k ≥ 1 → frames 4k−3 … 4k)."""
    f = torch.arange(frames, dtype=torch.float64)
    return torch.where(f == 0, f, torch.floor((f + 3) / 4))


def periodic(curve: torch.Tensor, period: float) -> tuple[float, float]:
    """(amplitude, phase in latents ∈ [0, period)) of the least-squares sinusoid of `period` latents through the
    curve (constant removed): the phase is the latent of the first peak."""
    lat = latent_of_frame(len(curve))
    w = 2 * math.pi / period
    a = torch.stack([torch.ones_like(lat), torch.cos(w * lat), torch.sin(w * lat)], dim=1)
    coef = torch.linalg.lstsq(a, curve.double()[:, None]).solution[:, 0]
    amp = float(torch.hypot(coef[1], coef[2]))
    return amp, float((math.atan2(coef[2], coef[1]) / w) % period)


def best_lag(curve: torch.Tensor, ref: torch.Tensor, max_lag: int) -> tuple[int, float]:
    """(lag in frames, correlation) maximising corr(curve[f], ref[f + lag]): a negative lag means `curve`'s bursts
    come earlier than the reference's."""
    best = (0, -2.0)
    for lag in range(-max_lag, max_lag + 1):
        a = curve[max(0, -lag): len(curve) - max(0, lag)]
        b = ref[max(0, lag): len(ref) - max(0, -lag)]
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        if r > best[1]:
            best = (lag, r)
    return best


def agreement(curves: torch.Tensor) -> float:
    """Mean pairwise correlation of the videos' per-frame curves [N, T]: ~0 when bursts come at content-driven
    times, high when every video bursts at the same frames."""
    n = curves.shape[0]
    if n < 2:
        return float("nan")
    c = torch.corrcoef(curves.double())
    return float((c.sum() - n) / (n * (n - 1)))


def summarise(data: dict) -> dict:
    out = {}
    for latents, settings in data.items():
        ref = None
        for name, entry in settings.items():
            per_prompt = {p: torch.tensor(c) for p, c in entry["curves"].items()}
            allc = torch.cat(list(per_prompt.values()))
            mean = allc.mean(0)
            if ref is None:
                ref = mean
            windows = [round(float(mean[a:b].mean()), 4) for a, b in clip_ranges(len(mean), FPS)]
            amp, phase = periodic(mean, PERIOD_LATENTS)
            lag, r = best_lag(mean, ref, max_lag=int(2 * PERIOD_LATENTS))
            out.setdefault(latents, {})[name] = {
                "mean": round(float(mean.mean()), 4),
                "per_prompt_mean": {p.split(" bounces")[0]: round(float(c.mean()), 4) for p, c in per_prompt.items()},
                "worst_2s_window": max(windows), "windows_2s": windows,
                "agreement": round(agreement(allc), 3),
                "agreement_per_prompt": {p.split(" bounces")[0]: round(agreement(c), 3) for p, c in per_prompt.items()},
                "period_amplitude": round(amp, 4), "period_phase_latents": round(phase, 1),
                "lag_vs_preset_frames": lag, "corr_at_lag": round(r, 3),
                "corr_at_0": round(float(torch.corrcoef(torch.stack([mean, ref]))[0, 1]), 3),
                "seconds": round(entry["seconds"], 1)}
    return out


def plot(data: dict, out: Path) -> None:
    for latents, settings in data.items():
        names = list(settings)
        fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.25 * len(names) + 0.6), sharex=True, sharey=True)
        for ax, name in zip(axes, names, strict=True):
            for k, (p, c) in enumerate(settings[name]["curves"].items()):
                c = torch.tensor(c)
                label = p.split(" bounces")[0] if ax is axes[0] else None
                ax.plot(c.mean(0).numpy(), lw=0.9, color=f"C{k}", label=label)
            ax.text(0.995, 0.85, name, transform=ax.transAxes, ha="right", va="top", fontsize=8)
            ax.grid(alpha=0.3)
            for k in range(1, 20):  # the preset's burst period, from latent 0
                f = 4 * k * PERIOD_LATENTS - 3
                if f < len(c[0]):
                    ax.axvline(f, color="grey", lw=0.6, ls=":")
        axes[0].legend(fontsize=7, ncol=3, loc="upper left")
        axes[-1].set_xlabel(f"frame ({latents} latents; dotted: every {PERIOD_LATENTS:.1f} latents, the period of "
                            "the second temporal RoPE frequency)")
        fig.supylabel("stray share (mean over seeds)")
        fig.tight_layout()
        fig.savefig(out / f"stray_per_frame_{latents}.png", dpi=100)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, nargs="+", default=[60])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="NAME")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--analyse", action="store_true", help="only read curves.json and write the summary and plots")
    ap.add_argument("--baseline", action="store_true", help="only measure real clips and the tolerance (baseline.json)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.baseline:
        res = baseline()
        (a.out / "baseline.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res["share"], indent=1))
        return 0
    path = a.out / "curves.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if not a.analyse:
        for latents in a.latents:
            data.setdefault(str(latents), {}).update(generate_curves(latents, a.seeds, a.settings))
            path.write_text(json.dumps(data, separators=(",", ":")))
    summary = summarise(data)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(data, a.out)
    for latents, rows in summary.items():
        print(f"\n{latents} latents | mean | worst 2-s window | agreement | amp@{PERIOD_LATENTS:.1f} | phase | "
              "lag (frames) r | r@0")
        for name, r in rows.items():
            print(f"{name:28s} {r['mean']:.4f} {r['worst_2s_window']:.4f} {r['agreement']:+.3f} "
                  f"{r['period_amplitude']:.4f} {r['period_phase_latents']:5.1f} {r['lag_vs_preset_frames']:+4d} "
                  f"{r['corr_at_lag']:+.3f} {r['corr_at_0']:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
