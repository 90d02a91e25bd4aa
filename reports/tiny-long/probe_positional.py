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
from PIL import Image  # noqa: E402

from longlive.eval.clips import clip_ranges  # noqa: E402
from longlive.eval.loading import load_frames  # noqa: E402
from longlive.eval.palette import COLOURS  # noqa: E402
from longlive.eval.stray import (  # noqa: E402
    blend_distance,
    prompt_colours,
    stray_mask,
    stray_per_frame,
    stray_share_for_prompt,
)
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
ROPE_PERIODS = (2 * math.pi, PERIOD_LATENTS / 2, PERIOD_LATENTS)  # 6.3 (the first frequency), 14.6, 29.2 latents

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


def example(out: Path, frames: tuple[int, ...] = (30, 60, 100, 112, 116, 120)) -> None:
    """burst_example.png: frames of the yellow triangle (seed 200, 60 latents; top) and the same frames with the
    stray 2 × 2 blocks in magenta (bottom). Frames 112–120 are the chunk at latent 28 where most videos burst."""
    prompt = EVAL_PROMPTS[2]
    with tempfile.TemporaryDirectory() as tmp:
        video = run(build(VideoRequest(model="tiny", frames=60, prompts=[prompt], seed=200, progress=False)),
                    Path(tmp)).video
    x = video[list(frames)]
    mask = stray_mask(x, *prompt_colours(prompt)).repeat_interleave(2, 1).repeat_interleave(2, 2)
    marked = x.clone()
    marked[mask] = torch.tensor([255, 0, 255], dtype=torch.uint8)
    sheet = torch.cat([torch.cat(list(x), dim=1), torch.cat(list(marked), dim=1)], dim=0)
    Image.fromarray(sheet.numpy()).save(out / "burst_example.png")


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


PERIODS = torch.linspace(1 / 60, 1 / 4, 200).reciprocal()  # latents: the chunk (2 latents) limits the short end


def spectrum(curve: torch.Tensor) -> torch.Tensor:
    """[len(PERIODS)] amplitude of the least-squares sinusoid of each period through the curve."""
    return torch.tensor([periodic(curve, float(p))[0] for p in PERIODS])


def rolled(curves: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each video's curve [N, T] rolled by a random whole number of chunks (8 frames) past chunk 0 (5 frames): bursts
    keep their shape and number but lose their timing."""
    head, body = curves[:, :5], curves[:, 5:]
    shifts = torch.randint(0, body.shape[1] // 8, (curves.shape[0],), generator=g) * 8
    return torch.cat([head, torch.stack([torch.roll(b, int(k)) for b, k in zip(body, shifts, strict=True)])], dim=1)


def spectrum_null(curves: torch.Tensor, draws: int = 40, seed: int = 0) -> float:
    """95th percentile of the spectrum's largest amplitude for mean curves of rolled videos (`rolled`)."""
    g = torch.Generator().manual_seed(seed)
    return float(torch.tensor([spectrum(rolled(curves, g).mean(0)).max() for _ in range(draws)]).quantile(0.95))


def best_lag(curve: torch.Tensor, ref: torch.Tensor, max_lag: int) -> tuple[int, float]:
    """(lag in frames, correlation) maximising corr(curve[f], ref[f + lag]): a positive lag means `curve`'s bursts
    come `lag` frames earlier than the reference's."""
    best = (0, -2.0)
    for lag in range(-max_lag, max_lag + 1):
        a = curve[max(0, -lag): len(curve) - max(0, lag)]
        b = ref[max(0, lag): len(ref) - max(0, -lag)]
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        if r > best[1]:
            best = (lag, r)
    return best


def agreement(curves: torch.Tensor, groups: list[int] | None = None) -> float:
    """Mean pairwise correlation of the videos' per-frame curves [N, T] (only pairs from different `groups` when
    given): ~0 when bursts come at content-driven times, high when every video bursts at the same frames."""
    n = curves.shape[0]
    if n < 2:
        return float("nan")
    c = torch.corrcoef(curves.double())
    g = torch.tensor(groups if groups is not None else list(range(n)))
    pairs = (g[:, None] != g[None, :]) & ~torch.eye(n, dtype=torch.bool)
    return float(c[pairs].mean())


def agreement_null(curves: torch.Tensor, groups: list[int], draws: int = 200, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the cross-prompt agreement of rolled videos (`rolled`): what agreement looks like when bursts
    keep their shape but lose their timing."""
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor([agreement(rolled(curves, g), groups) for _ in range(draws)])
    return float(v.mean()), float(v.std())


def summarise(data: dict) -> dict:
    out = {}
    for latents, settings in data.items():
        ref = None
        for name, entry in settings.items():
            per_prompt = {p: torch.tensor(c) for p, c in entry["curves"].items()}
            allc = torch.cat(list(per_prompt.values()))
            groups = [k for k, c in enumerate(per_prompt.values()) for _ in range(len(c))]
            mean = allc.mean(0)
            if ref is None:
                ref = mean
            ranges = clip_ranges(len(mean), FPS)
            windows = [round(float(mean[a:b].mean()), 4) for a, b in ranges]
            per_video_windows = torch.stack([allc[:, a:b].mean(1) for a, b in ranges], dim=1)  # [N, windows]
            worst = per_video_windows.amax(1)
            amp, phase = periodic(mean, PERIOD_LATENTS)
            lag, r = best_lag(mean, ref, max_lag=int(2 * PERIOD_LATENTS))
            cross = agreement(allc, groups)
            sp = spectrum(mean)
            top = int(sp.argmax())
            at = {f"{p:.1f}": round(periodic(mean, p)[0], 4) for p in ROPE_PERIODS}
            null_mean, null_std = agreement_null(allc, groups)
            out.setdefault(latents, {})[name] = {
                "mean": round(float(mean.mean()), 4),
                "per_prompt_mean": {p.split(" bounces")[0]: round(float(c.mean()), 4) for p, c in per_prompt.items()},
                "windows_2s_mean_curve": windows,
                "worst_2s_window_per_video": {"mean": round(float(worst.mean()), 4),
                                              "max": round(float(worst.max()), 4)},
                "share_of_windows_over_0.01": round(float((per_video_windows > 0.01).float().mean()), 3),
                "agreement_cross_prompt": round(cross, 3),
                "agreement_null": [round(null_mean, 3), round(null_std, 3)],
                "agreement_z": round((cross - null_mean) / max(null_std, 1e-9), 1),
                "period_amplitude": round(amp, 4), "period_phase_latents": round(phase, 1),
                "spectrum_peak": {"period_latents": round(float(PERIODS[top]), 1),
                                  "amplitude": round(float(sp[top]), 4), "null_p95": round(spectrum_null(allc), 4)},
                "amplitude_at_rope_periods": at,
                "spectrum": [round(float(v), 5) for v in sp],
                "lag_vs_preset_frames": lag, "corr_at_lag": round(r, 3),
                "corr_at_0": round(float(torch.corrcoef(torch.stack([mean, ref]))[0, 1]), 3),
                "seconds": round(entry["seconds"], 1)}
    return out


def plot_spectra(summary: dict, out: Path) -> None:
    """Amplitude against period for every setting, one panel per length; dotted: the RoPE periods."""
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
    for ax, (latents, rows) in zip(axes[0], summary.items(), strict=True):
        for k, (name, r) in enumerate(rows.items()):
            if name.startswith("cut@1"):
                continue  # a different scale (0.04–0.05 at 29 latents): the summary has it
            ax.plot(PERIODS.numpy(), r["spectrum"], lw=1.4 if k == 0 else 0.9, color=f"C{k % 10}", label=name)
        for p in ROPE_PERIODS:
            ax.axvline(p, color="grey", lw=0.7, ls=":")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([4, 6.3, 10, 14.6, 20, 29.2, 40, 60], ["4", "6.3", "10", "14.6", "20", "29.2", "40", "60"])
        ax.set_xlabel(f"period (latents), {latents}-latent videos; dotted: 2π/ω₀, π/ω₁, 2π/ω₁")
        ax.set_ylabel("amplitude of the mean stray curve")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "spectrum.png", dpi=80)
    plt.close(fig)


def plot(data: dict, out: Path) -> None:
    for latents, settings in data.items():
        names = list(settings)
        fig, axes = plt.subplots(len(names), 1, figsize=(11, 1.25 * len(names) + 0.6), sharex=True)
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
        fig.savefig(out / f"stray_per_frame_{latents}.png", dpi=70)
        plt.close(fig)
        # every video as a row (grouped by prompt): bursts at fixed frames are vertical stripes
        fig, axes = plt.subplots(len(names), 1, figsize=(11, 0.9 * len(names) + 0.6), sharex=True)
        for ax, name in zip(axes, names, strict=True):
            rows = torch.cat([torch.tensor(c) for c in settings[name]["curves"].values()])
            ax.imshow(rows.clamp(max=0.05).numpy(), aspect="auto", cmap="magma", vmin=0, vmax=0.05,
                      interpolation="nearest")
            ax.set_yticks([])
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        axes[-1].set_xlabel(f"frame ({latents} latents); rows: the videos, 3 prompts × seeds; colour: stray share "
                            "0 … ≥ 0.05")
        fig.tight_layout()
        fig.savefig(out / f"stray_videos_{latents}.png", dpi=80)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latents", type=int, nargs="+", default=[60])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="NAME")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--analyse", action="store_true", help="only read curves.json and write the summary and plots")
    ap.add_argument("--baseline", action="store_true", help="only measure real clips and the tolerance (baseline.json)")
    ap.add_argument("--example", action="store_true", help="only write burst_example.png")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.example:
        example(a.out)
        return 0
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
    plot_spectra(summary, a.out)
    for latents, rows in summary.items():
        print(f"\n{latents} latents | mean | worst 2-s window per video (mean, max) | windows > 0.01 | cross-prompt "
              "agreement (z) | spectrum peak: period, amplitude (null p95) | lag vs preset (frames), r | r at lag 0")
        for name, r in rows.items():
            w, sp = r["worst_2s_window_per_video"], r["spectrum_peak"]
            print(f"{name:28s} {r['mean']:.4f} {w['mean']:.4f} {w['max']:.4f} {r['share_of_windows_over_0.01']:.2f} "
                  f"{r['agreement_cross_prompt']:+.3f} ({r['agreement_z']:+.1f}) {sp['period_latents']:5.1f} "
                  f"{sp['amplitude']:.4f} ({sp['null_p95']:.4f}) {r['lag_vs_preset_frames']:+4d} "
                  f"{r['corr_at_lag']:+.3f} {r['corr_at_0']:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
