"""VAE presets: the published Wan2.2 / Wan2.1 VAEs and tiny CPU-sized variants (spec 01, "Wan2.2 VAE").

The latent mean/std lists are the fixed per-channel statistics shipped with the Wan models (they are
not in the checkpoint); latents are normalised as (μ − mean) / std.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pca_codec import PCACodecConfig

WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

ARCHS = ("wan2.2", "wan2.1")


@dataclass(frozen=True)
class VAEConfig:
    """Shape of one Wan VAE. ``arch`` picks the graph: ``wan2.2`` (2×2 patchify, residual stages with
    parameter-free shortcuts, decoder widths from ``dec_dim``) or ``wan2.1`` (no patchify, plain stacks,
    channel-halving up-convs, ``dec_dim`` must equal ``enc_dim``)."""

    name: str
    arch: str
    z_dim: int
    enc_dim: int
    dec_dim: int
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_down: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] | None = None  # None: zeros
    latent_std: tuple[float, ...] | None = None  # None: ones
    pruning: float = 0.0  # the channel pruning rate enc_dim / dec_dim were scaled by (MG-LightVAE; vae.lightvae)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown VAE arch {self.arch!r}; expected one of {ARCHS}")
        if not 0.0 <= self.pruning < 1.0:
            raise ValueError(f"VAE pruning rate {self.pruning} must lie in [0, 1)")
        if len(self.temporal_down) != len(self.dim_mult) - 1:
            raise ValueError("temporal_down needs one flag per downsampling stage (len(dim_mult) - 1)")
        for stats in (self.latent_mean, self.latent_std):
            if stats is not None and len(stats) != self.z_dim:
                raise ValueError(f"latent statistics must have z_dim={self.z_dim} entries, got {len(stats)}")

    @property
    def patch_size(self) -> int:
        return 2 if self.arch == "wan2.2" else 1

    @property
    def stride(self) -> tuple[int, int, int]:
        """Pixels per latent along (t, h, w); time is causal: T latents ↔ 1 + stride_t·(T − 1) frames."""
        s = self.patch_size * 2 ** (len(self.dim_mult) - 1)
        return 2 ** sum(self.temporal_down), s, s


VAE_PRESETS: dict[str, VAEConfig] = {
    "wan2.2": VAEConfig(
        "wan2.2", "wan2.2", z_dim=48, enc_dim=160, dec_dim=256,
        latent_mean=WAN22_LATENT_MEAN, latent_std=WAN22_LATENT_STD,
    ),
    "wan2.1": VAEConfig(
        "wan2.1", "wan2.1", z_dim=16, enc_dim=96, dec_dim=96,
        latent_mean=WAN21_LATENT_MEAN, latent_std=WAN21_LATENT_STD,
    ),
    # Ours: the Wan2.2 graph at toy widths (stride 4×16×16), runnable on 2 CPU cores.
    "tiny": VAEConfig("tiny", "wan2.2", z_dim=16, enc_dim=16, dec_dim=16),
    # Ours: the Wan2.1 graph at toy widths (stride 4×8×8), for testing that path on CPU.
    "tiny-wan2.1": VAEConfig("tiny-wan2.1", "wan2.1", z_dim=16, enc_dim=8, dec_dim=8),
}  # fmt: skip


def _codec_presets() -> dict:
    # The tiny preset's autoencoder: a fitted linear patch codec with the Wan interface (see pca_codec.py for why).
    return {"tiny-pca": PCACodecConfig("tiny-pca", z_dim=16, stride=(4, 16, 16))}


VAE_PRESETS.update(_codec_presets())


def get_vae_config(preset):
    """Return a VAE preset by name (a config object passes through), or raise a ValueError listing them."""
    if not isinstance(preset, str):
        return preset
    try:
        return VAE_PRESETS[preset]
    except KeyError:
        known = ", ".join(sorted(VAE_PRESETS))
        raise ValueError(f"unknown VAE preset {preset!r}; known presets: {known}") from None
