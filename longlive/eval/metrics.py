"""Metrics by name: the runner asks for `"psnr_vs_ref"` and hands over what it has; each metric says what it needs.

A metric is registered with `@register_metric(name, needs=Needs(...))`. Its function takes keyword arguments
named after the inputs it declares (`frames`, `latents`, `ref_frames`, `ref_latents`, `fps`, `prompt`) and returns a
float. Names equal to a result-row column (`longlive.runner.schema.METRICS`) fill that column; the others go to
`metrics_extra`. Inputs may be tensors, ndarrays or paths (mp4 for frames, safetensors for latents).

`higher_is_better` records a metric's good direction once: the worst quality window (`longlive.eval.drift`) is the
lowest value of a higher-is-better metric; None where no direction is declared (such a metric cannot be windowed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import clips, fidelity, flicker, palette, shapes, stray
from .loading import as_video

INPUTS = ("frames", "latents", "ref_frames", "ref_latents", "fps", "prompt")


@dataclass(frozen=True)
class Needs:
    """What a metric consumes; `reference` means the reference of the same kind (ref_frames / ref_latents)."""

    frames: bool = False
    latents: bool = False
    reference: bool = False
    fps: bool = False
    prompt: bool = False  # the video's prompt text (one caption)

    def inputs(self) -> tuple[str, ...]:
        """The keyword inputs these needs translate to, in `INPUTS` order."""
        names = []
        if self.frames:
            names += ["frames"] + (["ref_frames"] if self.reference else [])
        if self.latents:
            names += ["latents"] + (["ref_latents"] if self.reference else [])
        if self.fps:
            names.append("fps")
        if self.prompt:
            names.append("prompt")
        return tuple(n for n in INPUTS if n in names)


class MissingInputError(ValueError):
    """A metric was asked for without the inputs it declares."""


@dataclass(frozen=True)
class Metric:
    """A registered metric: callable with keyword inputs; extra inputs it does not need are ignored."""

    name: str
    fn: Callable[..., float]
    needs: Needs
    description: str = field(default="", compare=False)
    higher_is_better: bool | None = None

    def missing(self, available: Iterable[str]) -> list[str]:
        have = set(available)
        return [n for n in self.needs.inputs() if n not in have]

    def __call__(self, **inputs: Any) -> float:
        given = {k: v for k, v in inputs.items() if v is not None}
        unknown = set(given) - set(INPUTS)
        if unknown:
            raise TypeError(f"unknown metric inputs {sorted(unknown)}; known: {', '.join(INPUTS)}")
        missing = self.missing(given)
        if missing:
            raise MissingInputError(f"metric {self.name!r} needs {', '.join(missing)}")
        return float(self.fn(**{k: given[k] for k in self.needs.inputs()}))


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, needs: Needs, description: str | None = None,
                    higher_is_better: bool | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` under `name` with its declared needs and good direction (a duplicate name is an
    error)."""

    def wrap(fn: Callable[..., float]) -> Callable[..., float]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        doc = description if description is not None else ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        METRICS[name] = Metric(name, fn, needs, doc, higher_is_better)
        return fn

    return wrap


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; registered: {', '.join(sorted(METRICS))}") from None


def compute_metrics(names: Iterable[str], *, skip_missing: bool = False, **inputs: Any) -> dict[str, float | None]:
    """{name: value} for each metric; with `skip_missing`, a metric lacking inputs gives None instead of raising."""
    out: dict[str, float | None] = {}
    available = [k for k, v in inputs.items() if v is not None]
    for name in names:
        metric = get_metric(name)
        if skip_missing and metric.missing(available):
            out[name] = None
            continue
        out[name] = metric(**inputs)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Built-in metrics (names = result-row columns where one exists).


@register_metric("temporal_flickering", needs=Needs(frames=True), higher_is_better=True)
def _temporal_flickering(frames: Any) -> float:
    """VBench temporal flickering of the whole video, raw fraction (static video = 1.0)."""
    return flicker.temporal_flickering(frames)


@register_metric("temporal_flickering_long", needs=Needs(frames=True, fps=True), higher_is_better=True)
def _temporal_flickering_long(frames: Any, fps: float) -> float:
    """Temporal flickering averaged over VBench-Long's 2 s clips (pairs across clip cuts are not counted)."""
    return clips.score_long_video(frames, fps, flicker.temporal_flickering)


@register_metric("psnr_vs_ref", needs=Needs(frames=True, reference=True), higher_is_better=True)
def _psnr_vs_ref(frames: Any, ref_frames: Any) -> float:
    """PSNR (dB) of the video against the reference run's video; inf when identical."""
    return fidelity.psnr(frames, ref_frames)


@register_metric("latent_rel_err_vs_ref", needs=Needs(latents=True, reference=True), higher_is_better=False)
def _latent_rel_err_vs_ref(latents: Any, ref_latents: Any) -> float:
    """||x − ref|| / ||ref|| of the final latents against the reference run's."""
    return fidelity.latent_rel_err(latents, ref_latents)


def _one_caption(metric: str, prompt: str | list[str], reads: str = "colours") -> str:
    """The one caption a tiny-task metric reads its colours or shape from; several distinct prompts are an error, since
    a multi-shot video's shots differ in what they prompt."""
    texts = [prompt] if isinstance(prompt, str) else list(dict.fromkeys(prompt))
    if len(texts) != 1:
        raise ValueError(f"{metric} reads one caption's {reads}, got {len(texts)} prompts {texts[:3]}: measure "
                         f"each shot's frames with its own prompt")
    return texts[0]


@register_metric("stray_share", needs=Needs(frames=True, prompt=True), higher_is_better=False)
def _stray_share(frames: Any, prompt: str | list[str]) -> float:
    """Tiny task: share of pixels off every blend of the prompt's background and object colours in a third colour."""
    return stray.stray_share_for_prompt(frames, _one_caption("stray_share", prompt))


# The tiny task's evaluation metrics (longlive.train.tiny's tiny_eval.json, same names and values): the grey
# background and the whole palette as the tiny default's evaluation uses them, so a long cell can window them.
TINY_BACKGROUND = torch.tensor(palette.COLOURS["grey"])
TINY_PALETTE = torch.tensor(list(palette.COLOURS.values()), dtype=torch.uint8)
TINY_PALETTE_TOL = 24
"""`palette_match`'s tolerance in the tiny evaluation (L∞, 0–255)."""


def _prompted_kind(metric: str, prompt: str | list[str]) -> str:
    """The procedural shape the caption names, or a ValueError naming the metric and the caption."""
    text = _one_caption(metric, prompt, reads="shape")
    kind = shapes.named_shape(text)
    if kind is None:
        raise ValueError(f"{metric} needs a prompt naming exactly one shape ({', '.join(shapes.SHAPES)}); got {text!r}")
    return kind


@register_metric("palette_match", needs=Needs(frames=True), higher_is_better=True)
def _palette_match(frames: Any) -> float:
    """Tiny task: fraction of pixels within 24 (L∞) of a palette colour (flat procedural colours, not smears)."""
    return palette.palette_match(as_video(frames), TINY_PALETTE, tol=TINY_PALETTE_TOL)


@register_metric("prompt_colour_match", needs=Needs(frames=True, prompt=True), higher_is_better=True)
def _prompt_colour_match(frames: Any, prompt: str | list[str]) -> float:
    """Tiny task: of the pixels off the grey background, the fraction in a colour the prompt names (NaN: none drawn)."""
    text = _one_caption("prompt_colour_match", prompt)
    colours = palette.named_colours(text)
    if colours.shape[0] == 0:
        raise ValueError(f"prompt_colour_match needs a prompt naming an object colour (one of "
                         f"{', '.join(c for c in palette.COLOURS if c != 'grey')}); got {text!r}")
    return palette.prompt_colour_match(as_video(frames), colours, TINY_BACKGROUND)


@register_metric("shape_match", needs=Needs(frames=True, prompt=True), higher_is_better=True)
def _shape_match(frames: Any, prompt: str | list[str]) -> float:
    """Tiny task: fraction of frames whose drawn object is best matched by the prompted shape's template."""
    return shapes.shape_match(as_video(frames), _prompted_kind("shape_match", prompt), TINY_BACKGROUND)


@register_metric("shape_iou", needs=Needs(frames=True, prompt=True), higher_is_better=True)
def _shape_iou(frames: Any, prompt: str | list[str]) -> float:
    """Tiny task: mean IoU of each frame's drawn object with the prompted shape's template (0 for an empty frame)."""
    return shapes.shape_iou(as_video(frames), _prompted_kind("shape_iou", prompt), TINY_BACKGROUND)


@register_metric("foreground_fraction", needs=Needs(frames=True))
def _foreground_fraction(frames: Any) -> float:
    """Tiny task: fraction of pixels off the grey background. No good direction (the real clips' value is the
    target, not an end of the scale), so it is reported whole but cannot be windowed."""
    return palette.foreground_fraction(as_video(frames), TINY_BACKGROUND)
