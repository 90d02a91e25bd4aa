"""The Wan VAE (Wan2.2 z=48 / Wan2.1 z=16 / tiny): public encode / decode / streaming-decode API.

Layout everywhere is [B, C, T, H, W]; pixels are in [-1, 1]; latents are normalised per channel with
the shipped mean/std. Time is causal: frame 0 is encoded alone and every later group of
``stride_t`` (= 4) frames gives one latent, so T latents ↔ 1 + 4(T − 1) frames.

Decoding always runs one latent frame per decoder pass, as the published code does: that bounds
activation memory at full resolution and makes chunked (streaming) decoding bit-identical to
decoding everything at once, because both run exactly the same passes with the same carried caches.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .causal import CausalCache, CausalConv3d, in_layout
from .config import VAEConfig
from .interface import CodecShape, check_video
from .layers import patchify, unpatchify_into
from .wan21 import Decoder21, Encoder21
from .wan22 import Decoder22, Encoder22


class WanVAE(CodecShape, nn.Module):
    """Wan causal video VAE; parameter names equal the published ``Wan2.x_VAE.pth`` keys."""

    _anchor = "conv1.weight"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c, z = config, config.z_dim
        if c.arch == "wan2.2":
            self.encoder: nn.Module = Encoder22(c.enc_dim, 2 * z, c.dim_mult, c.num_res_blocks, c.temporal_down)
        else:
            self.encoder = Encoder21(c.enc_dim, 2 * z, c.dim_mult, c.num_res_blocks, c.temporal_down)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)  # → (μ, log σ²); we only ever use μ
        self.conv2 = CausalConv3d(z, z, 1)
        temporal_up = tuple(reversed(c.temporal_down))
        if c.arch == "wan2.2":
            self.decoder: nn.Module = Decoder22(c.dec_dim, z, c.dim_mult, c.num_res_blocks, temporal_up)
        else:
            if c.dec_dim != c.enc_dim:
                raise ValueError("the wan2.1 graph uses one base width for encoder and decoder")
            self.decoder = Decoder21(c.dec_dim, z, c.dim_mult, c.num_res_blocks, temporal_up)
        self.register_buffer("latent_mean", torch.empty(z), persistent=False)
        self.register_buffer("latent_std", torch.empty(z), persistent=False)
        self.reset_latent_stats()

    # ---- layout -----------------------------------------------------------------------------------
    def to_channels_last(self, enable: bool = True) -> WanVAE:
        """Store conv weights channels-last (NDHWC / NHWC) so cuDNN runs its channels-last kernels and
        activations stay channels-last (measured on an H200, Wan2.2 bf16 704×1280: ~4% faster, ~15% less
        peak memory). ``enable=False`` restores the default layout. Returns self."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.Conv2d):
                fmt = torch.channels_last_3d if m.weight.dim() == 5 else torch.channels_last
                m.weight.data = m.weight.data.contiguous(memory_format=fmt if enable else torch.contiguous_format)
        return self

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout a stream's activations keep (`CausalCache.memory_format`): the layout of the conv weights,
        read from the decoder's first 3×3×3 conv (a 1×1×1 weight is both layouts at once)."""
        w = self.decoder.conv1.weight
        cl = w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous()
        return torch.channels_last_3d if cl else torch.contiguous_format

    def to(self, *args: Any, **kwargs: Any) -> WanVAE:
        """``nn.Module.to``; ``memory_format=torch.channels_last(_3d)`` means :meth:`to_channels_last`
        (the stock method rejects our 4-D Conv2d weights under ``channels_last_3d``)."""
        fmt = kwargs.pop("memory_format", None)
        super().to(*args, **kwargs)
        if fmt in (torch.channels_last, torch.channels_last_3d, torch.contiguous_format):
            self.to_channels_last(fmt is not torch.contiguous_format)
        return self

    def reset_latent_stats(self) -> None:
        """(Re)build the mean/std buffers from the config, on the parameters' device.

        They are not in the checkpoint, so after a meta-device build plus ``load_state_dict(assign=True)``
        they must be materialised again.
        """
        z, dev = self.z_dim, self.conv1.weight.device
        mean = self.config.latent_mean or (0.0,) * z
        std = self.config.latent_std or (1.0,) * z
        self.latent_mean = torch.tensor(mean, dtype=torch.float32, device=dev)
        self.latent_std = torch.tensor(std, dtype=torch.float32, device=dev)

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (
            self.latent_mean.to(like.dtype).view(shape),
            self.latent_std.to(like.dtype).view(shape),
        )

    # ---- encode -----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """[B, 3, 1+4k, H, W] pixels in [-1, 1] → normalised μ latents [B, z, 1+k, H/s, W/s] (no sampling)."""
        st = self.stride[0]
        t = check_video(video, self.stride, "VAE")
        x = patchify(video.to(device=self.device, dtype=self.dtype), self.config.patch_size)
        cache = CausalCache(self.memory_format)
        bounds = [0, *range(1, t + 1, st)]  # frame 0 alone, then groups of stride_t frames
        outs = []
        for a, b in pairwise(bounds):
            outs.append(self.encoder(x[:, :, a:b], cache))
            cache.advance()
        h_enc = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        z = self.z_dim
        mu = F.conv3d(h_enc, self.conv1.weight[:z], self.conv1.bias[:z])
        mean, std = self._stats(mu)
        return mu.sub_(mean).div_(std)

    # ---- decode -----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, z, T, h, w] → video [B, 3, 1+4(T−1), h·s, w·s], clamped to [-1, 1]."""
        return self.streaming_decoder().decode(latents)

    def streaming_decoder(self) -> StreamingDecoder:
        """A decoder that carries the causal caches across calls (chunk-by-chunk == all at once)."""
        return StreamingDecoder(self)

    def decode_step(self, z: Tensor, cache: CausalCache) -> Tensor:
        """One decoder pass on de-normalised latent frames; returns patch-packed pixels, clamped."""
        y = self.decoder(self.conv2(z, cache), cache)
        cache.advance()
        return y.clamp_(-1.0, 1.0)

    def decode_into(self, z: Tensor, cache: CausalCache, out: Tensor, pos: int) -> int:
        """`decode_step` with its pixels unpatchified into ``out[:, :, pos:]`` (a video); returns how many frames.
        Compiled (`compile_vae`) and past the stream's first pass, the head's RMSNorm+SiLU writes its conv's padded
        input (as every norm→conv pair does), and the conv, bias, clamp and unpatchify are one graph
        (`layers.head_pixels`) whose frames are copied into place."""
        dec, p = self.decoder, self.config.patch_size
        fused = getattr(dec, "fused_head", None)  # set on a CausalStack, which has the head
        norm, conv = (dec.head["0"], dec.head["2"]) if fused is not None else (None, None)
        prev = cache.get(conv) if conv is not None else None
        if prev is None or norm.fused_pad is None or torch.is_grad_enabled():
            y = self.decode_step(z, cache)
            n = y.shape[2]
            unpatchify_into(out[:, :, pos : pos + n], y, p)
            return n
        x = dec.trunk(self.conv2(z, cache), cache)
        seq, pad = norm.fused_pad(x, norm.gain(x), prev, conv.causal_pad)
        cache.put(conv, pad)
        frames = fused(in_layout(seq, cache), conv.weight, conv.bias, conv.padding, p)
        cache.advance()
        n = frames.shape[2]
        out[:, :, pos : pos + n].copy_(frames)
        return n


class StreamingDecoder:
    """Decodes a latent video chunk by chunk, carrying the decoder's causal caches between calls.

    The first call with t latents returns 1 + 4(t − 1) frames, later calls 4t; concatenated, the
    outputs equal ``vae.decode`` of the whole latent video. ``reset()`` starts a new video.
    """

    def __init__(self, vae: WanVAE) -> None:
        self.vae = vae
        self.cache = CausalCache(vae.memory_format)
        # Wait for the device after every latent frame. A decode thread sharing the process with the generator
        # (decode=async/device) otherwise fills CUDA's launch queue, then blocks in a launch while holding the GIL,
        # and the generator's thread stalls with it (set by AsyncDecoder on CUDA; a synchronize releases the GIL).
        self.sync_each_step = False

    @property
    def first(self) -> bool:
        """Whether the next call starts a new video."""
        return self.cache.first

    def reset(self) -> None:
        self.cache.reset()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        vae = self.vae
        st, sh, sw = vae.stride
        if latents.dim() != 5 or latents.shape[1] != vae.z_dim:
            raise ValueError(f"decode expects latents [B, {vae.z_dim}, T, h, w], got shape {tuple(latents.shape)}")
        b, _, t, h, w = latents.shape
        if t == 0:
            raise ValueError("decode needs at least one latent frame")
        z = latents.to(device=vae.device, dtype=vae.dtype).contiguous(memory_format=vae.memory_format)
        mean, std = vae._stats(z)
        z = z * std + mean
        n_out = st * t - (st - 1 if self.cache.first else 0)
        out = torch.empty(b, 3, n_out, h * sh, w * sw, device=z.device, dtype=z.dtype)
        pos = 0
        for i in range(t):
            pos += vae.decode_into(z[:, :, i : i + 1], self.cache, out, pos)
            if self.sync_each_step and z.is_cuda:
                torch.cuda.current_stream(z.device).synchronize()
        if pos != n_out:  # would mean the temporal layout disagrees with the stride
            raise RuntimeError(f"decoder produced {pos} frames, expected {n_out}")
        return out
