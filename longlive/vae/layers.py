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
    fused_head = None  # set by longlive.infer.compile.compile_vae on a decoder: a compiled head_pixels

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        return run_head(self.head, self.trunk(x, cache), cache)

    def trunk(self, x: Tensor, cache: CausalCache) -> Tensor:
        """Everything before the head (the decoder's fused head takes over from here: `WanVAE.decode_into`)."""
        x = self.conv1(x, cache)
        for name in self.body:
            for layer in getattr(self, name):
                x = layer(x, cache)
        return x


def middle_blocks(dim: int) -> nn.ModuleList:
    """The middle of both halves: ResidualBlock → per-frame attention → ResidualBlock."""
    return nn.ModuleList([ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim)])


def head_blocks(dim: int, out: int) -> nn.ModuleDict:
    """Output head: RMSNorm (``head.0``) → SiLU → causal 3³ conv (``head.2``)."""
    return nn.ModuleDict({"0": RMSNorm(dim), "2": CausalConv3d(dim, out, 3, padding=1)})


def run_head(head: nn.ModuleDict, x: Tensor, cache: CausalCache) -> Tensor:
    return norm_silu_conv(head["0"], head["2"], x, cache)


def head_pixels(seq: Tensor, w: Tensor, b: Tensor, padding: tuple[int, ...], patch: int) -> Tensor:
    """The decoder head's conv on its padded input, then clamp and unpatchify: clamped pixels [B, 3, T, H·p, W·p],
    contiguous. Compiled (`compile_vae`), the bias, the clamp and the unpatchify are one pass over the conv's
    output, where eager runs a strided bias add, a clamp and a strided copy into the video (`unpatchify_into`)."""
    y = F.conv3d(seq, w, b, padding=padding)
    return unpatchify(y.clamp(-1.0, 1.0), patch)


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


# Nearest ×2 then a 3×3 conv (zero padding 1) is four 2×2 convs on the small input, one per output parity: output row
# 2i + a reads input rows i − 1 + a and i + a, and of the three kernel rows, row 0 lands on the first of them for
# a = 0 and rows 1, 2 on the second; for a = 1 rows 0, 1 land on the first and row 2 on the second (the same for
# columns). PARITY_TAPS[a][k] marks the kernel taps summed into tap k of parity a's 2×2 kernel.
PARITY_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def subpixel_weight(w: Tensor, fmt: torch.memory_format = torch.contiguous_format) -> Tensor:
    """A 3×3 conv weight [O, I, 3, 3] → the parity kernels [4·O, I, 1, 2, 2] (channels ordered (a, b, o)) of
    `subpixel_up`, in layout `fmt`. Taps are summed in (at least) float32 and rounded once to w's dtype: in BF16
    that is one rounding of each summed weight, where nearest ×2 + 3×3 conv sums the same products inside the conv
    in float32."""
    if w.dim() != 4 or w.shape[2:] != (3, 3):
        raise ValueError(f"subpixel_weight expects a 3×3 Conv2d weight [O, I, 3, 3], got shape {tuple(w.shape)}")
    acc = torch.promote_types(w.dtype, torch.float32)
    m = torch.tensor(PARITY_TAPS, dtype=acc, device=w.device)  # [a, k, tap]
    k = torch.einsum("akh,oihw,blw->aboikl", m, w.to(acc), m)
    k = k.reshape(4 * w.shape[0], w.shape[1], 1, 2, 2).to(w.dtype)
    return k.contiguous(memory_format=fmt if fmt == CL3D else torch.contiguous_format)


def subpixel_up(x: Tensor, w_sub: Tensor, bias: Tensor | None, fmt: torch.memory_format,
                skip: Tensor | None = None) -> Tensor:
    """conv3×3(nearest×2(x)) + bias [+ skip] for x [B, C, T, H, W], with `w_sub = subpixel_weight(w)`: one 2×2
    conv with padding 1 on the small input ([B, 4·O, T, H+1, W+1]: 16/36 of the multiply-adds of the 3×3 conv at
    the upsampled size), then one pass that interleaves the four parities into [B, O, T, 2H, 2W] (layout `fmt`),
    adding the bias and `skip` (same shape) on the way. Parity (a, b) of output pixel (2i + a, 2j + b) sits at
    (i + a, j + b) of its conv output; the views below (unfold, then the diagonal of window offset and parity)
    select exactly those, so compiled the interleave is one kernel."""
    s = F.conv3d(x, w_sub, None, padding=(0, 1, 1))
    b, c4, t, h1, w1 = s.shape
    o, h, w = c4 // 4, h1 - 1, w1 - 1
    v = s.view(b, 2, 2, o, t, h1, w1).unfold(5, h, 1).unfold(6, w, 1)  # [b, a, bb, o, t, row0, col0, i, j]
    v = v.diagonal(dim1=1, dim2=5).diagonal(dim1=1, dim2=4)  # row0 = a, col0 = bb: [b, o, t, i, j, a, bb]
    if bias is not None:
        v = v + bias.view(1, o, 1, 1, 1, 1, 1)
    if skip is not None:  # the same [b, o, t, i, j, a, bb] view of the skip
        v = v + skip.view(b, o, t, h, 2, w, 2).permute(0, 1, 2, 3, 5, 4, 6)
    if fmt == CL3D:  # (contiguous(): where H or W is 1 the reshape may be a view of s)
        return as_channels_last(v, (0, 2, 3, 5, 4, 6, 1), (b, t, 2 * h, 2 * w, o)).contiguous(memory_format=fmt)
    return v.permute(0, 1, 2, 3, 5, 4, 6).reshape(b, o, t, 2 * h, 2 * w).contiguous()


def upsample_steady(x: Tensor, prev: Tensor | None, w_t: Tensor | None, b_t: Tensor | None, w_sub: Tensor,
                    b: Tensor, fmt: torch.memory_format, skip: Tensor | None = None,
                    dup: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor | None]:
    """An up-`Resample` on a stream past its first pass, as one function of tensors for `compile_vae`:
    (output [+ the stage's DupUp3D shortcut of `skip`], the time conv's new pad or None). With a time conv
    (upsample3d; `prev` its causal pad): [prev ; x] → (3,1,1) conv → bias + the time interleave in one pass;
    then `subpixel_up` (the nearest ×2 is never written). `dup` = (out_channels, factor_t, factor_s) of the
    shortcut, whose expansion of `skip` is read inside the same final pass."""
    pad = None
    if w_t is not None:
        seq = torch.cat([prev, x], dim=2)
        pad = seq[:, :, -prev.shape[2]:].clone()
        x = _interleave_time(F.conv3d(seq, w_t, b_t), fmt)
    short = None if skip is None else dup_up(skip, *dup, torch.contiguous_format)
    return subpixel_up(x, w_sub, b, fmt, short), pad


class Resample(nn.Module):
    """Spatial ×2 resampling, optionally with Wan's causal temporal ×2 conv.

    Modes (Wan's names): ``upsample2d``, ``upsample3d``, ``downsample2d``, ``downsample3d``.
    Up: [temporal: causal (3,1,1) conv to 2C channels, interleaved into 2 frames] → nearest-exact ×2
    → 3×3 conv (``out_dim`` channels; Wan2.1 halves them). Down: pad right/bottom by 1 → 3×3 stride-2
    conv → [temporal: stride-2 (3,1,1) conv whose windows start at the stream's frame 0].
    The stream's first frame bypasses the temporal conv in both directions, as in Wan.
    """

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")
    fused = None  # set by longlive.infer.compile.compile_vae on up-resamples: a compiled upsample_steady

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

    def forward(self, x: Tensor, cache: CausalCache, skip: tuple[DupUp3D, Tensor] | None = None) -> Tensor:
        """`skip` = (the stage's DupUp3D shortcut, the stage's input): returns resample(x) + shortcut(input), which
        the compiled path computes in the same pass that writes the output (an up-resample is a stage's last block)."""
        conv = self.resample["1"]
        if self.up:
            if self._steady(cache):
                return self._up_fused(x, cache, skip)
            if self.mode == "upsample3d":
                x = self._time_up(x, cache)
            y = in_layout(conv_frames(upsample_hw2(x, cache_format(cache)), conv, padding=1), cache)
            return y if skip is None else y.add_(skip[0](skip[1], cache))
        if skip is not None:
            raise ValueError("Resample: a shortcut is added only after an up-resample")
        x = conv_frames(F.pad(x, (0, 1, 0, 1)), conv, stride=2)
        return self._time_down(x, cache) if self.mode == "downsample3d" else x

    def _steady(self, cache: CausalCache | None) -> bool:
        """Whether the compiled path applies: compiled, no graph recorded, past the stream's first pass (which
        bypasses the time conv), and with the time conv's causal pad in the cache where there is a time conv."""
        if self.fused is None or cache is None or cache.first or torch.is_grad_enabled():
            return False
        return self.mode == "upsample2d" or cache.get(self.time_conv) is not None

    def _up_fused(self, x: Tensor, cache: CausalCache, skip: tuple[DupUp3D, Tensor] | None) -> Tensor:
        fmt, conv = cache_format(cache), self.resample["1"]
        tc = getattr(self, "time_conv", None)
        prev = None if tc is None else cache.get(tc)
        dup = None if skip is None else (skip[0].out_channels, skip[0].factor_t, skip[0].factor_s)
        y, pad = self.fused(x, prev, None if tc is None else tc.weight, None if tc is None else tc.bias,
                            self.subpixel_weight(fmt), conv.bias, fmt, None if skip is None else skip[1], dup)
        if pad is not None:
            cache.put(tc, pad)
        return in_layout(y, cache)

    def subpixel_weight(self, fmt: torch.memory_format) -> Tensor:
        """`subpixel_weight` of the 3×3 conv, kept until the weight changes (pointer, in-place version, layout)."""
        w = self.resample["1"].weight
        key = (w.data_ptr(), w.dtype, w.device, w.stride(), fmt, None if w.is_inference() else w._version)
        cached = getattr(self, "_subpixel", None)
        if cached is None or cached[0] != key or key[-1] is None:
            cached = (key, subpixel_weight(w.detach(), fmt))
            self._subpixel = cached
        return cached[1]

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

    fused = None  # set by longlive.infer.compile.compile_vae: a compiled dup_up

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
        fmt = cache_format(cache)  # channels-last: the stage's residual add then runs on two channels-last tensors
        if self.fused is not None and cache is not None and not cache.first and not torch.is_grad_enabled():
            return self.fused(x, o, ft, fs, fmt)
        x = dup_up(x, o, ft, fs, fmt)
        if cache is not None and cache.first and ft > 1:
            x = x[:, :, ft - 1 :]
        return x


def dup_up(x: Tensor, out_channels: int, factor_t: int, factor_s: int, fmt: torch.memory_format) -> Tensor:
    """`DupUp3D` of a whole chunk, written in layout `fmt` in one copy (compiled: one vectorised kernel, where
    eager's copy reads its source with a stride)."""
    b, c, t, h, w = x.shape
    o, ft, fs = out_channels, factor_t, factor_s
    x = x.unsqueeze(2).expand(b, c, o * ft * fs * fs // c, t, h, w).reshape(b, o, ft, fs, fs, t, h, w)
    if fmt == CL3D:
        x = as_channels_last(x, (0, 5, 2, 6, 3, 7, 4, 1), (b, t * ft, h * fs, w * fs, o))
        return x.contiguous(memory_format=fmt)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, o, t * ft, h * fs, w * fs).contiguous()


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
