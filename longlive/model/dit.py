"""The causal Wan DiT as plain PyTorch (spec 01, "Block structure").

Module and parameter names equal the published Wan layout (without the generator file's `model.`
prefix) so published checkpoints load strictly. No parallelism, quantisation or compilation lives here:
those are transforms applied from outside. Timesteps are per latent frame; the residual stream and all
modulation arithmetic are float32 (as in the published model, where the float32 modulation promotes the
stream), the Linears run in the parameters' dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from longlive.model.attention import FP8Window, sdpa, sdpa_backend
from longlive.model.kv_cache import KVCache
from longlive.model.presets import ModelConfig
from longlive.model.rope import Rope3D, apply_rope


class RMSNorm(nn.Module):
    """RMS norm over the full width in float32, then the learned weight (q/k norms)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype; returns float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


@dataclass
class AttnContext:
    """What self-attention needs besides its input: RoPE angles, the KV cache and the kernel choice."""

    cos: torch.Tensor
    sin: torch.Tensor
    cache: KVCache | None = None
    backend: str = "math"
    # Replaces cache + SDPA: attn_fn(q, k, v, layer) -> out, all [B, L, H, D] with q, k already rotated. This is
    # how parallelism (Ulysses all-to-alls) and training masks (FlexAttention) are applied from outside.
    attn_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None
    frame_prompt: torch.Tensor | None = None  # [F]: which stacked prompt each latent frame attends to
    # Relative RoPE (the release's `use_relative_rope`): cos/sin of the attended window's keys in the cache's buffer
    # order. Set, the cache holds unrotated keys and they are rotated after the window is read.
    key_cos: torch.Tensor | None = None
    key_sin: torch.Tensor | None = None


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.layer_idx = 0  # this block's index (KV-cache layer, attn_fn's `layer`); set by CausalWanModel
        self.qkv: nn.Linear | None = None  # one [3·dim] projection in place of q, k, v (`longlive.model.fuse`)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The q, k and v projections of x: three Linears, or the fused one's three slices."""
        if self.qkv is not None:
            return self.qkv(x).chunk(3, dim=-1)
        return self.q(x), self.k(x), self.v(x)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        B, L, _ = x.shape
        shape = (B, L, self.num_heads, self.head_dim)
        q, k, v = self.project(x)
        q = apply_rope(self.norm_q(q).view(shape), ctx.cos, ctx.sin)
        k = self.norm_k(k).view(shape)
        if ctx.key_cos is None:  # absolute positions: keys enter the cache rotated
            k = apply_rope(k, ctx.cos, ctx.sin)
        return self.o(cached_attention(q, k, v.view(shape), ctx, self))


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext,
                     attn: SelfAttention) -> torch.Tensor:
    """Self-attention of this forward's rotated q/k/v [B, L, H, D] → [B, L, H·D] (contiguous): through
    ctx.attn_fn, or over the KV cache's window, or over the input alone.

    Kept out of compiled graphs: `longlive.infer.compile.compile_blocks` wraps it in `torch.compiler.disable` (a
    transform from outside, so importing the model does not load the compiler stack); the cache's slot bookkeeping
    is Python and the window grows while it fills; the kernel is cuDNN/flash either way. The layer index is read from
    the module here, not passed through the compiled block, so one compiled graph serves every layer; the output is
    made contiguous here so the graph after it always sees the same layout, whatever the cache storage.
    """
    B, L = q.shape[:2]
    if ctx.attn_fn is not None:
        out = ctx.attn_fn(q, k, v, attn.layer_idx)
    else:
        if ctx.cache is not None:
            k, v = ctx.cache.update(attn.layer_idx, k, v)
        if ctx.key_cos is not None:  # relative positions: the window's keys are rotated where they now sit
            k = k.dequantize(q.dtype) if isinstance(k, FP8Window) else k
            k = apply_rope(k, ctx.key_cos, ctx.key_sin)
        out = sdpa(q, k, v, ctx.backend)  # k, v: tensors or FP8Windows
    return out.reshape(B, L, -1).contiguous()


class CrossAttention(nn.Module):
    """Attention from video tokens to all (zero-padded) text tokens; text K/V can be precomputed."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = context.shape
        k = self.norm_k(self.k(context)).view(B, L, self.num_heads, self.head_dim)
        v = self.v(context).view(B, L, self.num_heads, self.head_dim)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], backend: str,
                frame_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """frame_prompt [F] (batch 1): frame f's tokens attend to prompt frame_prompt[f] of the stacked kv."""
        B, L, _ = x.shape
        q = self.norm_q(self.q(x)).view(B, L, self.num_heads, self.head_dim)
        k, v = kv
        if frame_prompt is None:
            if k.shape[0] != B:
                k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
            return self.o(sdpa(q, k, v, backend).reshape(B, L, -1))
        if B != 1:
            raise ValueError("per-frame prompts need batch 1 (prompts are stacked on the batch axis of text_kv)")
        per_frame = L // frame_prompt.numel()
        token_prompt = frame_prompt.repeat_interleave(per_frame)
        out = torch.empty_like(q)
        for p in torch.unique(frame_prompt).tolist():
            sel = (token_prompt == p).nonzero().squeeze(1)
            out[:, sel] = sdpa(q[:, sel], k[p : p + 1], v[p : p + 1], backend).to(out.dtype)  # autocast: bf16 out
        return self.o(out.reshape(B, L, -1))


class WanBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(dim, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self, x: torch.Tensor, e0: torch.Tensor, frames: int, ctx: AttnContext,
        text_kv: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """x: float32 [B, L, dim]; e0: float32 [B, F, 6, dim] (per-frame time projection).

        text_kv: this layer's precomputed cross-attention (K, V), or the embedded prompt [B, Lt, dim], projected
        here — inside the block, so a sharded (FSDP) or checkpointed block owns its own K/V projection.
        """
        B, L, D = x.shape
        if torch.is_tensor(text_kv):
            text_kv = self.cross_attn.text_kv(text_kv)
        dtype = self.norm3.weight.dtype  # the compute dtype (q may be a packed QuantLinear)
        mod = (self.modulation.float().unsqueeze(1) + e0).unbind(2)  # 6 × [B, F, dim]

        def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            h = h.view(B, frames, -1, D) * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
            return h.view(B, L, D).to(dtype)

        def gated(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return (y.float().view(B, frames, -1, D) * gate.unsqueeze(2)).view(B, L, D)

        y = self.self_attn(modulate(self.norm1(x), mod[0], mod[1]), ctx)
        x = x + gated(y, mod[2])
        x = x + self.cross_attn(self.norm3(x).to(dtype), text_kv, sdpa_backend(ctx.backend), ctx.frame_prompt).float()
        y = self.ffn(modulate(self.norm2(x), mod[3], mod[4]))
        return x + gated(y, mod[5])


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        out = math.prod(cfg.patch_size) * cfg.out_channels
        self.norm = LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """x float32 [B, L, dim]; e float32 [B, F, dim] (the unprojected time embedding)."""
        B, L, D = x.shape
        shift, scale = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).unbind(2)
        h = self.norm(x).view(B, frames, -1, D) * (1 + scale.unsqueeze(2)) + shift.unsqueeze(2)
        return self.head(h.view(B, L, D).to(self.head.weight.dtype))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoid of t (any shape) → [..., dim]: cos half then sin half, frequencies 10000^(−i/half), float64."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t.to(torch.float64).unsqueeze(-1) * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


class CausalWanModel(nn.Module):
    """Causal Wan DiT. forward() denoises one chunk given per-frame timesteps and (optionally) a KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        for i, blk in enumerate(self.blocks):
            blk.self_attn.layer_idx = i
        self.head = Head(cfg)
        self.rope = Rope3D(cfg.head_dim, cfg.rope_theta, cfg.rope_max_positions)
        self.attn_backend = "math"

    # -- initialisation (random weights for tests and speed runs; training sets its own) -----------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> CausalWanModel:
        gen = None
        if seed is not None:
            gen = torch.Generator(device=next(self.parameters()).device).manual_seed(seed)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_in, fan_out = m.weight.shape[1], m.weight.shape[0]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()
            elif isinstance(m, (RMSNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        w = self.patch_embedding.weight
        bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0]))
        w.uniform_(-bound, bound, generator=gen)
        self.patch_embedding.bias.zero_()
        for blk in self.blocks:
            blk.modulation.normal_(0.0, self.cfg.dim**-0.5, generator=gen)
        self.head.modulation.normal_(0.0, self.cfg.dim**-0.5, generator=gen)
        return self

    # -- pieces the inference loop calls -----------------------------------------------------------
    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [B, Lt, text_dim] → the model's text tokens [B, Lt, dim]."""
        dtype = self.text_embedding[0].weight.dtype
        return self.text_embedding(context.to(dtype))

    def text_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Embed a prompt [B, Lt, text_dim] and project its cross-attention K/V once for every layer."""
        ctx = self.embed_text(context)
        return [blk.cross_attn.text_kv(ctx) for blk in self.blocks]

    def time_embed(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps [B, F] → (e [B, F, dim], e0 [B, F, 6, dim]), both float32."""
        dtype = self.time_embedding[0].weight.dtype
        e = self.time_embedding(timestep_embedding(t, self.cfg.freq_dim).to(dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))
        return e.float(), e0.float()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        cache: KVCache | None = None,
        frame_offset: int = 0,
        frame_positions: torch.Tensor | list[int] | None = None,
        attn_fn: Callable | None = None,
        frame_prompt: torch.Tensor | None = None,
        relative_rope: bool = False,
    ) -> torch.Tensor:
        """Predict the flow v for latents x [B, C, F, H, W] at per-frame timesteps t [B, F].

        frame_offset is the temporal RoPE position of the first frame (absolute frame + shot offset);
        frame_positions gives every frame's position explicitly instead (teacher forcing: both copies of a
        frame share one; sequence parallelism: a rank's frames). With a cache, this chunk's K/V are written into
        the cache's current slot and attention runs over the whole window; without one, attention is over the
        input's own tokens; attn_fn replaces both (see AttnContext). frame_prompt [F] selects, per frame, one of
        the prompts stacked in text_kv / context.

        relative_rope (the release's `use_relative_rope`, needs a cache): temporal positions count within the attended
        window instead — its chunks numbered 0, 1, … in chronological order, this chunk last
        (`KVCache.relative_frame_positions`); frame_offset (and with it the shot offset) is not used, as in the
        release. The cache then holds unrotated keys, so one cache serves one mode for a whole video.
        """
        cfg = self.cfg
        B, C, Fr, H, W = x.shape
        pt, ph, pw = cfg.patch_size
        if C != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} latent channels, got {C}")
        if H % ph or W % pw or Fr % pt:
            raise ValueError(f"latent {Fr}×{H}×{W} is not divisible by the patch {cfg.patch_size}")
        if t.shape != (B, Fr):
            raise ValueError(f"timesteps must be per frame with shape {(B, Fr)}, got {tuple(t.shape)}")
        if text_kv is None:
            if context is None:
                raise ValueError("pass either context (text embeddings) or precomputed text_kv")
            text_kv = [self.embed_text(context)] * len(self.blocks)  # each block projects its own K/V
        dtype = self.patch_embedding.weight.dtype
        h = self.patch_embedding(x.to(dtype))  # [B, dim, F', H', W']
        f2, h2, w2 = h.shape[2:]
        x_tok = h.flatten(2).transpose(1, 2).float()  # [B, L, dim], tokens in (f, h, w) order
        e, e0 = self.time_embed(t)
        key_cos = key_sin = None
        if relative_rope:
            if cache is None or attn_fn is not None or frame_positions is not None:
                raise ValueError("relative_rope positions come from a KV cache's window: pass cache, without "
                                 "attn_fn (sequence parallelism) or frame_positions")
            query_pos, key_pos = cache.relative_frame_positions()
            if len(query_pos) != f2:
                raise ValueError(f"relative_rope: the cache's chunk has {len(query_pos)} frames, the input {f2}")
            cos, sin = self.rope.cos_sin_positions(query_pos, h2, w2, device=x.device)
            key_cos, key_sin = self.rope.cos_sin_positions(key_pos, h2, w2, device=x.device)
        elif frame_positions is None:
            cos, sin = self.rope.cos_sin(frame_offset, f2, h2, w2, device=x.device)
        else:
            positions = [int(p) for p in (frame_positions.tolist() if torch.is_tensor(frame_positions)
                                          else frame_positions)]
            if len(positions) != f2:
                raise ValueError(f"frame_positions has {len(positions)} entries for {f2} latent frames")
            cos, sin = self.rope.cos_sin_positions(positions, h2, w2, device=x.device)
        if frame_prompt is not None:
            frame_prompt = torch.as_tensor(frame_prompt, device=x.device)
        ctx = AttnContext(cos=cos, sin=sin, cache=cache, backend=self.attn_backend, attn_fn=attn_fn,
                          frame_prompt=frame_prompt, key_cos=key_cos, key_sin=key_sin)
        for i, blk in enumerate(self.blocks):
            x_tok = blk(x_tok, e0, f2, ctx, text_kv[i])
        out = self.head(x_tok, e, f2)  # [B, L, pt·ph·pw·C]
        return unpatchify(out, (f2, h2, w2), cfg.patch_size, cfg.out_channels)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """[B, L, pt·ph·pw·C] with channel innermost → [B, C, F, H, W]."""
    B = tokens.shape[0]
    f, h, w = grid
    pt, ph, pw = patch
    u = tokens.view(B, f, h, w, pt, ph, pw, channels)
    u = u.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return u.reshape(B, channels, f * pt, h * ph, w * pw)


def build_model(
    cfg: ModelConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    seed: int | None = 0, init: bool = True,
) -> CausalWanModel:
    """Construct a model directly on `device` (use 'meta' for shape checks) in `dtype`."""
    with torch.device(device or "cpu"):
        model = CausalWanModel(cfg)
    if dtype is not None:
        model = model.to(dtype)
    if init and torch.device(device or "cpu").type != "meta":
        model.init_weights(seed)
    return model
