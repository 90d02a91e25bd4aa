"""The tiny preset's autoencoder: a linear space-time patch codec fitted in closed form (PCA), with the Wan VAE's
interface (encode / decode / streaming_decoder, stride 4×16×16, causal first frame).

Why not the Wan2.2 VAE graph at tiny widths: on 2 CPU cores it does not learn the procedural shapes within the
tiny default's minutes (reports/tiny-default run1–3: ≈15 dB, shapes lost), while this codec, fitted in seconds on
the same clips, reconstructs them at ≈24 dB with circles, squares and triangles intact at the same latent shape
(16 channels on an 8×8 grid for 128×128 frames), so the tiny DiT, its training and every inference path run
unchanged. It is not invertible (3,072 pixel values per latent position → 16), it is the best linear code of
that size for the data it was fitted on.

Layout: later frames are coded in groups of 4 (4×16×16×3 → z). Frame 0 is coded alone, either with its own mean
and basis (a 16×16×3 patch → z; `first_tube` False, also what a checkpoint without the flag means) or, as the tiny
default fits it, as a still tube of 4 copies through the group basis, decoded as the mean of the tube's 4 frames
(`first_tube` True). The tube puts latent 0 in the same space as every other latent, as the Wan VAE's shared
encoder does: with its own basis, channel k of latent 0 meant something else than channel k of latent 1, had half
their scale after the shared normalisation, and the tiny default's first frames came out as noise (run9, run10).
Coefficients are normalised per channel by their measured mean and std, so the denoiser sees unit-scale latents.
Every latent frame is coded independently, so streaming decode is trivially equal to decoding the whole video.
Unfitted, the bases are seeded random orthonormal rows (a working stand-in).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .interface import CodecShape, check_video


@dataclass(frozen=True)
class PCACodecConfig:
    name: str
    z_dim: int = 16
    stride: tuple[int, int, int] = (4, 16, 16)

    @property
    def patch_size(self) -> int:
        return self.stride[1]

    @property
    def first_dim(self) -> int:
        return 3 * self.stride[1] * self.stride[2]

    @property
    def group_dim(self) -> int:
        return self.stride[0] * self.first_dim


def _orthonormal_rows(k: int, d: int, seed: int) -> Tensor:
    if torch.get_default_device().type == "meta":  # shapes only: a checkpoint's values replace them (load_vae)
        return torch.empty(k, d)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.T.float().contiguous()


class PCACodec(CodecShape, nn.Module):
    """Linear patch codec; buffers (bases, means, latent stats) are its checkpoint."""

    _anchor = "group_basis"
    patch_local = True  # each latent pixel decodes its own 16x16 patch tube: spatial tiles need no halo

    def __init__(self, config: PCACodecConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.register_buffer("first_mean", torch.zeros(config.first_dim))
        self.register_buffer("first_basis", _orthonormal_rows(z, config.first_dim, 0))
        self.register_buffer("group_mean", torch.zeros(config.group_dim))
        self.register_buffer("group_basis", _orthonormal_rows(z, config.group_dim, 1))
        self.register_buffer("latent_mean", torch.zeros(z))
        self.register_buffer("latent_std", torch.ones(z))
        self.register_buffer("first_tube", torch.tensor(False))

    @staticmethod
    def upgrade_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A codec saved before `first_tube` existed coded frame 0 with its own basis: say so."""
        return state if "first_tube" in state else {**state, "first_tube": torch.tensor(False)}

    # ---- the Wan VAE interface (z_dim, stride, device, dtype: CodecShape) -------------------------------
    def reset_latent_stats(self) -> None:
        """The stats are buffers of the checkpoint here (nothing to rebuild after a meta-device load)."""

    def to_channels_last(self, enable: bool = True) -> PCACodec:
        return self

    def to(self, *args: Any, **kwargs: Any) -> PCACodec:
        kwargs.pop("memory_format", None)
        super().to(*args, **kwargs)
        return self

    def _patches(self, video: Tensor, frames: int) -> Tensor:
        """[B, 3, n·frames, H, W] → [B, n, h, w, frames·s·s·3] (one row per latent position)."""
        b, c, t, H, W = video.shape
        s = self.config.patch_size
        x = video.reshape(b, c, t // frames, frames, H // s, s, W // s, s)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, t // frames, H // s, W // s, -1)

    def _unpatch(self, rows: Tensor, frames: int) -> Tensor:
        b, n, h, w, _ = rows.shape
        s = self.config.patch_size
        x = rows.reshape(b, n, h, w, frames, s, s, 3).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, 3, n * frames, h * s, w * s)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """[B, 3, 1+4k, H, W] in [-1, 1] → normalised latents [B, z, 1+k, H/16, W/16]."""
        st = self.stride[0]
        t = check_video(video, self.stride, "codec")
        v = video.to(self.device, self.dtype)
        if bool(self.first_tube):
            parts = [(self._patches(v[:, :, :1].expand(-1, -1, st, -1, -1), st) - self.group_mean) @ self.group_basis.T]
        else:
            parts = [(self._patches(v[:, :, :1], 1) - self.first_mean) @ self.first_basis.T]
        if t > 1:
            parts.append((self._patches(v[:, :, 1:], st) - self.group_mean) @ self.group_basis.T)
        coef = torch.cat(parts, dim=1)  # [B, T', h, w, z]
        coef = (coef - self.latent_mean) / self.latent_std
        return coef.permute(0, 4, 1, 2, 3).contiguous()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, z, T, h, w] → video [B, 3, 1+4(T−1), 16h, 16w], clamped to [-1, 1]."""
        return self.streaming_decoder().decode(latents)

    def _decode(self, latents: Tensor, first: bool) -> Tensor:
        if latents.dim() != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"decode expects latents [B, {self.z_dim}, T, h, w], got shape {tuple(latents.shape)}")
        if latents.shape[2] == 0:
            raise ValueError("decode needs at least one latent frame")
        # the latent stats stay float32 when a stats file is applied after a BF16 load (vae.loading.apply_stats): take
        # them in the codec's dtype so the basis products see one dtype
        std, mean = self.latent_std.to(self.dtype), self.latent_mean.to(self.dtype)
        coef = latents.to(self.device, self.dtype).permute(0, 2, 3, 4, 1) * std + mean
        out = []
        if first and bool(self.first_tube):  # the still tube's least-squares frame: the mean of its 4 frames
            tube = self._unpatch(coef[:, :1] @ self.group_basis + self.group_mean, self.stride[0])
            out.append(tube.mean(dim=2, keepdim=True))
            coef = coef[:, 1:]
        elif first:
            out.append(self._unpatch(coef[:, :1] @ self.first_basis + self.first_mean, 1))
            coef = coef[:, 1:]
        if coef.shape[1]:
            out.append(self._unpatch(coef @ self.group_basis + self.group_mean, self.stride[0]))
        return torch.cat(out, dim=2).clamp_(-1.0, 1.0)

    def streaming_decoder(self) -> PCAStreamingDecoder:
        return PCAStreamingDecoder(self)


class PCAStreamingDecoder:
    """Same stream rule as the Wan StreamingDecoder: the first call yields 1 + 4(t − 1) frames, later ones 4t."""

    def __init__(self, codec: PCACodec) -> None:
        self.vae = codec
        self._first = True

    @property
    def first(self) -> bool:
        return self._first

    def reset(self) -> None:
        self._first = True

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        out = self.vae._decode(latents, self._first)
        self._first = False
        return out


# ---- fitting ---------------------------------------------------------------------------------------------------
def _principal(rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean and top-k principal directions (orthonormal rows) of rows [N, d], in float64."""
    x = rows.double()
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mean.float(), vecs[:, -k:].flip(1).T.float().contiguous()


@torch.no_grad()
def fit_pca_codec(codec: PCACodec, clips: Iterable[Tensor], log: Callable[[str], None] = print, *,
                  first_tube: bool = False) -> dict:
    """Fit bases and latent stats on clips (uint8 [T, H, W, 3], T = 1 + 4k); returns the explained-variance split.
    `first_tube` codes frame 0 as a still tube through the group basis (see the module docstring); the first-frame
    basis is still fitted, and its explained variance reported, but not used.

    Closed form: mean and covariance of the patches, eigen-decomposition, top z directions; then the per-channel
    mean / std of the coefficients, so encoded latents are unit-scale.
    """
    st = codec.stride[0]
    videos = [c.permute(3, 0, 1, 2).float().div(127.5).sub(1.0)[None] for c in clips]
    if not videos:
        raise ValueError("fit_pca_codec needs at least one clip")
    for v in videos:
        if (v.shape[2] - 1) % st or v.shape[2] < 1 + st:
            raise ValueError(f"clips need T = 1 + {st}·k frames with k ≥ 1, got {v.shape[2]}")
    first = torch.cat([codec._patches(v[:, :, :1], 1).reshape(-1, codec.config.first_dim) for v in videos])
    group = torch.cat([codec._patches(v[:, :, 1:], st).reshape(-1, codec.config.group_dim) for v in videos])
    z = codec.z_dim
    stats = {}
    for name, rows in (("first", first), ("group", group)):
        mean, basis = _principal(rows, z)
        getattr(codec, f"{name}_mean").copy_(mean)
        getattr(codec, f"{name}_basis").copy_(basis)
        centred = rows - mean
        total = centred.pow(2).sum()
        kept = (centred @ basis.T).pow(2).sum()
        stats[f"{name}_explained_variance"] = float(kept / total.clamp_min(1e-12))
    codec.first_tube.fill_(first_tube)
    codec.latent_mean.zero_()
    codec.latent_std.fill_(1.0)
    coef = torch.cat([codec.encode(v).permute(0, 2, 3, 4, 1).reshape(-1, z) for v in videos])
    codec.latent_mean.copy_(coef.mean(0))
    codec.latent_std.copy_(coef.std(0).clamp_min(1e-4))
    log(f"pca codec: fitted on {len(videos)} clips ({first.shape[0]} first-frame and {group.shape[0]} group patches), "
        f"explained variance {stats['first_explained_variance']:.3f} / {stats['group_explained_variance']:.3f}")
    return stats


def save_codec(codec: PCACodec, path) -> None:
    """The codec's buffers as safetensors (atomic), plus vae_stats.json beside it with the same latent stats (the
    loader applies that file to every tiny-preset VAE; a stale one from a Wan VAE run must not survive)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}, str(tmp))
    tmp.replace(path)
    stats = {"latent_mean": codec.latent_mean.tolist(), "latent_std": codec.latent_std.tolist()}
    path.with_name("vae_stats.json").write_text(json.dumps(stats))
