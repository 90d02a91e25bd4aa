"""Building blocks shared by the Wan2.1 and Wan2.2 VAEs.

Parameter names mirror the published Wan checkpoints (``residual.{0,2,3,6}``, ``resample.1``,
``time_conv``, ``to_qkv``, ...) so a published state dict loads strictly; the parameter-free pieces of
the original ``nn.Sequential`` stacks (SiLU, dropout, resize, zero-pad) are done functionally.
Every block takes ``(x, cache)`` with ``x`` laid out [B, C, T, H, W].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .causal import CausalCache, CausalConv3d, in_layout


def silu(x: Tensor) -> Tensor:
    """SiLU, in place when no graph is recorded (callers only pass fresh tensors)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def conv_frames(x: Tensor, conv: nn.Conv2d, stride: int = 1, padding: int = 0) -> Tensor:
    """Apply a Conv2d to every frame of a [B, C, T, H, W] tensor without folding T into the batch."""
    return F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, stride=(1, stride, stride), padding=(0, padding, padding))


class RMSNorm(nn.Module):
    """Wan's RMS_norm: L2-normalise over channels, times √C, times a per-channel gain γ.

    ``images`` selects the published γ shape: [C, 1, 1] (attention) or [C, 1, 1, 1] (everywhere else).
    """

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim**0.5

    fused = None  # set by longlive.infer.compile.compile_vae: a compiled rms_silu(x, gain)
    fused_pad = None  # and a compiled rms_silu_pad(x, gain, prev, keep)

    def gain(self, x: Tensor) -> Tensor:
        return self.gamma.reshape(-1, *([1] * (x.dim() - 2))) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.gain(x)

    def forward_silu(self, x: Tensor) -> Tensor:
        """RMSNorm then SiLU, as every residual block and head runs them: three passes over a large activation
        in eager mode, one fused kernel once compiled."""
        if self.fused is not None and not torch.is_grad_enabled():
            return self.fused(x, self.gain(x))
        return silu(self(x))


def rms_silu(x: Tensor, gain: Tensor) -> Tensor:
    """The function `compile_vae` compiles: SiLU(RMSNorm(x)) with the norm's gain."""
    return F.silu(F.normalize(x, dim=1) * gain)


def rms_silu_pad(x: Tensor, gain: Tensor, prev: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """[prev ; SiLU(RMSNorm(x))] along time and its last `keep` frames (the next call's causal pad): compiled,
    one kernel writes the conv's padded input and the cache tail, where eager writes the activation, then copies
    it into the concatenation, then copies the tail."""
    seq = torch.cat([prev, F.silu(F.normalize(x, dim=1) * gain)], dim=2)
    return seq, seq[:, :, -keep:].clone()


def norm_silu_conv(norm: RMSNorm, conv: CausalConv3d, x: Tensor, cache: CausalCache | None) -> Tensor:
    """conv(SiLU(norm(x))) with the conv's causal pad: the fused path once compiled and the stream has a pad."""
    prev = cache.get(conv) if cache is not None else None
    if norm.fused_pad is None or prev is None or conv.causal_pad == 0 or torch.is_grad_enabled():
        return conv(norm.forward_silu(x), cache)
    seq, tail = norm.fused_pad(x, norm.gain(x), prev, conv.causal_pad)
    cache.put(conv, tail)
    return in_layout(nn.Conv3d.forward(conv, in_layout(seq, cache)), cache)


def residual_block_steady(x: Tensor, prev_a: Tensor, prev_b: Tensor, g_a: Tensor, w_a: Tensor, b_a: Tensor,
                          g_b: Tensor, w_b: Tensor, b_b: Tensor, w_s: Tensor | None, b_s: Tensor | None,
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """A ResidualBlock on a stream that already has its causal pads, as one function of tensors for
    `compile_vae`: (output, new pad of conv a, new pad of conv b). Compiled, inductor calls cuDNN for the
    convolutions without their bias and fuses each bias into the pass that follows (norm+SiLU+pad, residual add);
    eager PyTorch adds a conv's bias in a separate broadcast pass over the whole output, which at the decoder's
    channels-last shapes ran as a strided kernel (reports/perf, v5: 56 such adds of 0.72 ms in one chunk)."""
    seq_a, pad_a = rms_silu_pad(x, g_a, prev_a, prev_a.shape[2])
    y = F.conv3d(seq_a, w_a, b_a, padding=(0, 1, 1))
    seq_b, pad_b = rms_silu_pad(y, g_b, prev_b, prev_b.shape[2])
    out = F.conv3d(seq_b, w_b, b_b, padding=(0, 1, 1))
    h = x if w_s is None else F.conv3d(x, w_s, b_s)
    return out + h, pad_a, pad_b


class ResidualBlock(nn.Module):
    """RMSNorm → SiLU → causal 3³ conv → RMSNorm → SiLU → causal 3³ conv, plus a (1×1×1) shortcut."""

    fused = None  # set by longlive.infer.compile.compile_vae: a compiled residual_block_steady

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.ModuleDict(
            {
                "0": RMSNorm(in_dim),
                "2": CausalConv3d(in_dim, out_dim, 3, padding=1),
                "3": RMSNorm(out_dim),
                "6": CausalConv3d(out_dim, out_dim, 3, padding=1),
            }
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        r = self.residual
        a, b = r["2"], r["6"]
        pads = (cache.get(a), cache.get(b)) if cache is not None else (None, None)
        if self.fused is not None and None not in pads and not torch.is_grad_enabled():
            s = self.shortcut
            out, pad_a, pad_b = self.fused(
                x, *pads, r["0"].gain(x), a.weight, a.bias, r["3"].gain(x), b.weight, b.bias,
                None if s is None else s.weight, None if s is None else s.bias)
            cache.put(a, pad_a)
            cache.put(b, pad_b)
            return in_layout(out, cache)
        h = x if self.shortcut is None else self.shortcut(x, cache)
        y = norm_silu_conv(r["0"], r["2"], x, cache)
        y = norm_silu_conv(r["3"], r["6"], y, cache)
        return y.add_(h)


def _frame_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ/√c) v with explicit GEMMs, scores in float32.

    Deliberately not F.scaled_dot_product_attention: its kernel choice follows process-global flags that
    the DiT's `sdpa_kernel(...)` context sets from the main thread, so an async decode thread could find
    every kernel disabled (head_dim here is the full width, e.g. 1024, which only the math kernel takes).
    """
    scale = q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scale)
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        b, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c)
        qkv = F.linear(tokens, self.to_qkv.weight.view(3 * c, c), self.to_qkv.bias)
        q, k, v = qkv.chunk(3, dim=-1)
        o = _frame_attention(q, k, v)  # (b, t) act as batch dims: one frame per "head"
        o = F.linear(o, self.proj.weight.view(c, c), self.proj.bias)
        return x + o.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class CausalStack(nn.Module):
    """Encoder/decoder walk shared by both Wan graphs: conv1 → body module lists (in `body` order) → head,
    every causal conv reading and updating one `CausalCache`."""

    body: tuple[str, ...] = ()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for name in self.body:
            for layer in getattr(self, name):
                x = layer(x, cache)
        return run_head(self.head, x, cache)


def middle_blocks(dim: int) -> nn.ModuleList:
    """The middle of both halves: ResidualBlock → per-frame attention → ResidualBlock."""
    return nn.ModuleList([ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim)])


def head_blocks(dim: int, out: int) -> nn.ModuleDict:
    """Output head: RMSNorm (``head.0``) → SiLU → causal 3³ conv (``head.2``)."""
    return nn.ModuleDict({"0": RMSNorm(dim), "2": CausalConv3d(dim, out, 3, padding=1)})


def run_head(head: nn.ModuleDict, x: Tensor, cache: CausalCache) -> Tensor:
    return norm_silu_conv(head["0"], head["2"], x, cache)


CL3D = torch.channels_last_3d


def cache_format(cache: CausalCache | None) -> torch.memory_format:
    return torch.contiguous_format if cache is None else cache.memory_format


def as_channels_last(x: Tensor, order: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """One copy of a view into a channels-last [B, C, T, H, W] tensor: `order` permutes x so that its dims run
    (B, T, H, W, C) once the groups are merged into `shape` = (B, T, H, W, C)."""
    return x.permute(*order).reshape(shape).permute(0, 4, 1, 2, 3)


def _interleave_time(y: Tensor, fmt: torch.memory_format = torch.contiguous_format) -> Tensor:
    """[B, 2C, T, H, W] → [B, C, 2T, H, W]: the first C channels become the even output frames (one copy, in
    layout `fmt`)."""
    b, c2, t, h, w = y.shape
    v = y.view(b, 2, c2 // 2, t, h, w)
    if fmt == CL3D:
        return as_channels_last(v, (0, 3, 1, 4, 5, 2), (b, 2 * t, h, w, c2 // 2))
    return v.permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)


def upsample_hw2(x: Tensor, fmt: torch.memory_format = torch.contiguous_format) -> Tensor:
    """Nearest ×2 in H and W, which is what nearest-exact does at scale 2 (output i reads input i // 2). The
    channels-last path writes channels-last in one copy; F.interpolate's 3-D kernel would return NCDHW."""
    if fmt != CL3D:
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact")
    b, c, t, h, w = x.shape
    v = x[:, :, :, :, None, :, None].expand(b, c, t, h, 2, w, 2)
    return as_channels_last(v, (0, 2, 3, 4, 5, 6, 1), (b, t, 2 * h, 2 * w, c))


class Resample(nn.Module):
    """Spatial ×2 resampling, optionally with Wan's causal temporal ×2 conv.

    Modes (Wan's names): ``upsample2d``, ``upsample3d``, ``downsample2d``, ``downsample3d``.
    Up: [temporal: causal (3,1,1) conv to 2C channels, interleaved into 2 frames] → nearest-exact ×2
    → 3×3 conv (``out_dim`` channels; Wan2.1 halves them). Down: pad right/bottom by 1 → 3×3 stride-2
    conv → [temporal: stride-2 (3,1,1) conv whose windows start at the stream's frame 0].
    The stream's first frame bypasses the temporal conv in both directions, as in Wan.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown resample mode {mode!r}; expected one of {self.MODES}")
        self.mode = mode
        self.up = mode.startswith("up")
        out_dim = dim if out_dim is None or not self.up else out_dim
        conv = nn.Conv2d(dim, out_dim, 3, padding=1) if self.up else nn.Conv2d(dim, dim, 3, stride=2)
        self.resample = nn.ModuleDict({"1": conv})  # index 0 of Wan's Sequential is the parameter-free resize
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        conv = self.resample["1"]
        if self.up:
            if self.mode == "upsample3d":
                x = self._time_up(x, cache)
            return in_layout(conv_frames(upsample_hw2(x, cache_format(cache)), conv, padding=1), cache)
        x = conv_frames(F.pad(x, (0, 1, 0, 1)), conv, stride=2)
        return self._time_down(x, cache) if self.mode == "downsample3d" else x

    def _time_up(self, x: Tensor, cache: CausalCache) -> Tensor:
        fmt = cache_format(cache)
        if not cache.first:
            return _interleave_time(self.time_conv(x, cache), fmt)
        head, rest = x[:, :, :1], x[:, :, 1:]
        if rest.shape[2] == 0:
            return head
        return torch.cat([head, _interleave_time(self.time_conv(rest, cache), fmt)], dim=2)

    def _time_down(self, x: Tensor, cache: CausalCache) -> Tensor:
        prev = cache.get(self)
        if prev is None:  # first chunk: frame 0 also comes out alone; windows (0,1,2), (2,3,4), ...
            if x.shape[2] % 2 == 0:
                raise ValueError("temporal downsampling: the first chunk must have an odd number of frames")
            cache.put(self, x[:, :, -1:].clone())
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        if x.shape[2] % 2:
            raise ValueError("temporal downsampling: chunks after the first must have an even number of frames")
        seq = torch.cat([prev, x], dim=2)
        cache.put(self, x[:, :, -1:].clone())
        return self.time_conv(seq)


class AvgDown3D(nn.Module):
    """Parameter-free Wan2.2 down shortcut: fold (t, h, w) sub-positions into channels, average groups.

    Input channel c at sub-position (i_t, i_h, i_w) lands at folded channel
    ``c·f + i_t·s² + i_h·s + i_w`` (f = f_t·s²); consecutive groups of ``C_in·f / C_out`` folded channels
    are averaged. A chunk whose length is not a multiple of f_t is zero-padded on the left in time
    (in the causal schedule only the 1-frame first chunk is).
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        factor = factor_t * factor_s * factor_s
        if (in_channels * factor) % out_channels:
            raise ValueError(f"AvgDown3D: {in_channels}·{factor} channels do not split into {out_channels} groups")
        self.out_channels = out_channels
        self.factor_t, self.factor_s = factor_t, factor_s
        self.group = in_channels * factor // out_channels

    def forward(self, x: Tensor) -> Tensor:
        ft, fs = self.factor_t, self.factor_s
        if ft == fs == 1 and self.group == 1:
            return x
        pad_t = -x.shape[2] % ft
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, self.out_channels, self.group, t // ft, h // fs, w // fs).mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free Wan2.2 up shortcut, the inverse layout of :class:`AvgDown3D`.

    Each input channel is repeated ``C_out·f / C_in`` times, and the repeated channels are unfolded
    into (t, h, w) sub-positions. On the stream's first chunk the first ``f_t − 1`` frames are dropped
    (the first latent frame decodes to a single frame).
    """

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int) -> None:
        super().__init__()
        factor = factor_t * factor_s * factor_s
        if (out_channels * factor) % in_channels:
            raise ValueError(f"DupUp3D: {out_channels}·{factor} channels are not a multiple of {in_channels}")
        self.out_channels = out_channels
        self.factor_t, self.factor_s = factor_t, factor_s
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        ft, fs, o = self.factor_t, self.factor_s, self.out_channels
        b, c, t, h, w = x.shape
        x = x.unsqueeze(2).expand(b, c, self.repeats, t, h, w).reshape(b, o, ft, fs, fs, t, h, w)
        if cache_format(cache) == CL3D:  # the stage's residual add then runs on two channels-last tensors
            x = as_channels_last(x, (0, 5, 2, 6, 3, 7, 4, 1), (b, t * ft, h * fs, w * fs, o))
        else:
            x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, o, t * ft, h * fs, w * fs)
        if cache is not None and cache.first and ft > 1:
            x = x[:, :, ft - 1 :]
        return x


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, T, H, W] → [B, C·p², T, H/p, W/p], channels packed (c r q): r = width, q = height offset."""
    if p == 1:
        return x
    b, c, t, hh, ww = x.shape
    x = x.reshape(b, c, t, hh // p, p, ww // p, p)  # b c t h q w r
    return x.permute(0, 1, 6, 4, 2, 3, 5).reshape(b, c * p * p, t, hh // p, ww // p)


def unpatchify(x: Tensor, p: int) -> Tensor:
    """Inverse of :func:`patchify`."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w)  # b c r q t h w
    return x.permute(0, 1, 4, 5, 3, 6, 2).reshape(b, cpp // (p * p), t, h * p, w * p)


def unpatchify_into(dst: Tensor, src: Tensor, p: int) -> None:
    """Write ``unpatchify(src, p)`` into ``dst`` (possibly a strided slice) in one copy."""
    if p == 1:
        dst.copy_(src)
        return
    b, c, t, hh, ww = dst.shape
    h, w = hh // p, ww // p
    dst.view(b, c, t, h, p, w, p).copy_(src.view(b, c, p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2))
