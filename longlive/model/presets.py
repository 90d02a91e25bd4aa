"""Model presets: the published LongLive shapes plus a tiny CPU preset.

One dataclass describes everything the inference path needs to know about a preset: DiT shapes, the VAE
and text encoder it pairs with, the pixel resolution and the KV-cache geometry (spec 01, 02).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of one causal Wan DiT preset and the components it is paired with."""

    name: str
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_channels: int
    out_channels: int
    text_dim: int
    text_len: int
    vae: str
    text_encoder: str
    height: int
    width: int
    chunk_frames: int
    window_frames: int
    sink_frames: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024
    shot_rope_offset: int = 8
    vae_stride: tuple[int, int, int] = (4, 16, 16)
    fps: int = 24
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_stride[1], self.width // self.vae_stride[2]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.latent_hw
        return (h // self.patch_size[1]) * (w // self.patch_size[2])

    def with_overrides(self, **kw) -> ModelConfig:
        return replace(self, **kw)


PRESETS: dict[str, ModelConfig] = {
    "wan2.2-ti2v-5b": ModelConfig(
        name="wan2.2-ti2v-5b", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
        in_channels=48, out_channels=48, text_dim=4096, text_len=512,
        vae="wan2.2", text_encoder="umt5-xxl", height=704, width=1280,
        chunk_frames=8, window_frames=32, sink_frames=8, vae_stride=(4, 16, 16),
    ),
    "wan2.1-t2v-1.3b": ModelConfig(
        name="wan2.1-t2v-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30,
        in_channels=16, out_channels=16, text_dim=4096, text_len=512,
        vae="wan2.1", text_encoder="umt5-xxl", height=480, width=832,
        chunk_frames=3, window_frames=12, sink_frames=3, vae_stride=(4, 8, 8), fps=16,
    ),
    # Ours: the Wan architecture at toy widths, trainable and runnable on 2 CPU cores.
    "tiny": ModelConfig(
        name="tiny", dim=128, ffn_dim=384, num_heads=4, num_layers=2,
        in_channels=16, out_channels=16, text_dim=64, text_len=32,
        vae="tiny-pca", text_encoder="tiny", height=128, width=128,
        chunk_frames=2, window_frames=8, sink_frames=2, vae_stride=(4, 16, 16),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """Return a preset by name, or raise a ValueError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


DEFAULT_VIDEO_SECONDS = 5.0


def default_frames(cfg: ModelConfig, seconds: float = DEFAULT_VIDEO_SECONDS) -> int:
    """Latent frames for about `seconds` of video: the whole number of chunks whose 1 + 4(T−1) frames come nearest
    to seconds·fps (tiny and 5B: 30 and 32 latents, 4.9 s and 5.2 s)."""
    stride = cfg.vae_stride[0]
    target = seconds * cfg.fps
    return min((k * cfg.chunk_frames for k in range(1, 10_000)),
               key=lambda t: (abs(1 + stride * (t - 1) - target), t))
