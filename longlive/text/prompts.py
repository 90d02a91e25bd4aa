"""The release's prompt convention for multi-shot video, shared by inference plans and training captions.

A shot's first chunk is conditioned on "The scene transitions. <caption>"; every later chunk of the shot on the bare
caption (the release's multi-shot training data). A chunk whose text has the prefix starts a new shot.
"""

from __future__ import annotations

SCENE_CUT_PREFIX = "The scene transitions. "


def bare_caption(text: str) -> str:
    """The caption without the scene-cut prefix."""
    return text[len(SCENE_CUT_PREFIX):] if text.startswith(SCENE_CUT_PREFIX) else text


def with_prefix(caption: str) -> str:
    """The caption of a shot's first chunk (the prefix once, whether or not the caption has it)."""
    return SCENE_CUT_PREFIX + bare_caption(caption)
