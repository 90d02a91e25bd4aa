"""The release's prompt conventions, shared by inference plans and training captions.

A shot's first chunk is conditioned on "<prefix><caption>" (the release's `scene_cut_prefix`, by default
"The scene transitions. "); every later chunk of the shot on the bare caption (the release's multi-shot training
data). A chunk whose text has the prefix starts a new shot. The prefix is an option because a model fine-tuned on
other captions marks its cuts differently; inference must use the prefix its model was trained with.

`DEFAULT_NEGATIVE_PROMPT` is the release's default negative prompt for classifier-free guidance (its
`utils/config.py`, `DEFAULT_NEGATIVE_PROMPT`, filled in by `normalize_config` when a config names none; Wan2.2's
usual negative prompt). It is used only when the guidance scale is not 1.
"""

from __future__ import annotations

SCENE_CUT_PREFIX = "The scene transitions. "

DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，"
    "整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，"
    "画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def check_scene_cut_prefix(prefix: str) -> None:
    """An empty prefix would make every chunk after the first a scene cut."""
    if not prefix.strip():
        raise ValueError(f"scene_cut_prefix={prefix!r} must contain text: an empty prefix makes every chunk a cut")


def bare_caption(text: str, prefix: str = SCENE_CUT_PREFIX) -> str:
    """The caption without the scene-cut prefix."""
    return text[len(prefix):] if text.startswith(prefix) else text


def with_prefix(caption: str, prefix: str = SCENE_CUT_PREFIX) -> str:
    """The caption of a shot's first chunk (the prefix once, whether or not the caption has it)."""
    return prefix + bare_caption(caption, prefix)
