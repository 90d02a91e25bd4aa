"""Quantised KV-cache storage (spec 02, "Quantised KV cache"): FP8 or NVFP4 packed per chunk slot.

- Blocks: NVFP4 with 16-channel blocks of one head of one token (E4M3 scale each) and one FP32 tensor scale
  per (layer, K or V, slot); FP8 E4M3 with one scale per (token, head).
- Scale rule (`kv_rule`, the release's `kv_quant_scale_rule`, default `mse`): which NVFP4 rule picks each block's
  scale (longlive.quant.nvfp4.RULES); FP8 has one rule (amax / 448), so the option applies to NVFP4 only.
- Writes: only the chunk's clean re-run is kept (`commit`), quantised once and copied in place into
  pre-allocated slot buffers whose addresses never change. Evicting a slot is just overwriting it (the cache
  is a ring), so nothing is ever requantised.
- Reads: the current chunk is attended in the compute dtype straight from this forward's K/V; past slots are
  dequantised into one scratch window shared by all layers. That is one dequantisation per attention call:
  keeping dequantised copies across steps would need the full-precision cache we are avoiding.
"""

from __future__ import annotations

import torch

from longlive.model.kv_cache import QUANTISED, CacheGeometry, KVCache, heads_first_buffer
from longlive.quant import kernels
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor

DEFAULT_KV_RULE = "mse"
"""The release's `kv_quant_scale_rule` default: Four-over-Six with the lower squared error per block."""


class QuantKVStorage:
    def __init__(self, num_layers: int, batch: int, num_slots: int, chunk_tokens: int, heads: int, head_dim: int,
                 *, fmt: str = "nvfp4", dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None,
                 rule: str = DEFAULT_KV_RULE):
        if fmt not in ("fp8", "nvfp4"):
            raise ValueError(f"unknown KV quantisation {fmt!r}; choose fp8 or nvfp4")
        if fmt == "nvfp4" and head_dim % 16:
            raise ValueError(f"NVFP4 KV needs head_dim divisible by 16, got {head_dim}")
        self.fmt, self.rule, self.dtype = fmt, rule, dtype
        self.batch, self.chunk_tokens, self.heads, self.head_dim = batch, chunk_tokens, heads, head_dim
        rows = batch * chunk_tokens * heads  # one row = one head of one token
        L, S = num_layers, num_slots
        kw = {"device": device}
        if fmt == "nvfp4":
            self.values = torch.zeros((L, 2, S, rows, head_dim // 2), dtype=torch.uint8, **kw)
            self.scales = torch.zeros((L, 2, S, rows, head_dim // 16), dtype=torch.float8_e4m3fn, **kw)
            self.amax = torch.zeros((L, 2, S, 1), dtype=torch.float32, **kw)
            self.gscale = torch.zeros((L, 2, S, 1), dtype=torch.float32, **kw)
            self.packed = (self.values, self.scales, self.amax, self.gscale)
        else:
            self.data = torch.zeros((L, 2, S, rows, head_dim), dtype=torch.float8_e4m3fn, **kw)
            self.scale = torch.zeros((L, 2, S, rows, 1), dtype=torch.float32, **kw)
            self.packed = (self.data, self.scale)
        args = (batch, S * chunk_tokens, heads, head_dim, dtype, device)
        self.scratch = (heads_first_buffer(*args), heads_first_buffer(*args))  # in SDPA's layout
        self.filled = torch.zeros((L, S), dtype=torch.bool)  # slots holding committed (quantised) data

    # -- per slot ------------------------------------------------------------------------------------------
    def _store(self, layer: int, kv: int, slot: int, x: torch.Tensor) -> None:
        flat = x.reshape(-1, self.head_dim)
        if self.fmt == "nvfp4":
            q = kernels.quantize_nvfp4(flat, block=(1, 16), rule=self.rule)
            self.values[layer, kv, slot].copy_(q.values)
            self.scales[layer, kv, slot].copy_(q.scales)
            self.amax[layer, kv, slot].copy_(q.amax.reshape(1))
            self.gscale[layer, kv, slot].copy_(q.global_scale.reshape(1))
        else:
            q = kernels.quantize_fp8(flat, granularity="row")
            self.data[layer, kv, slot].copy_(q.data)
            self.scale[layer, kv, slot].copy_(q.scale.reshape(-1, 1))

    def _load(self, layer: int, kv: int, slot: int) -> torch.Tensor:
        rows = self.batch * self.chunk_tokens * self.heads
        if self.fmt == "nvfp4":
            q = NVFP4Tensor(self.values[layer, kv, slot], self.scales[layer, kv, slot], self.amax[layer, kv, slot],
                            self.gscale[layer, kv, slot], (rows, self.head_dim), self.rule)
            out = kernels.dequantize_nvfp4(q, self.dtype)
        else:
            q = FP8Tensor(self.data[layer, kv, slot], self.scale[layer, kv, slot], (rows, self.head_dim), "row")
            out = kernels.dequantize_fp8(q, self.dtype)
        return out.view(self.batch, self.chunk_tokens, self.heads, self.head_dim)

    # -- KVStorage -----------------------------------------------------------------------------------------
    def attend(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
               commit: bool) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.chunk_tokens
        for kv, (x, buf) in enumerate(zip((k, v), self.scratch, strict=True)):
            for s in range(filled):
                if s != slot:
                    if not bool(self.filled[layer, s]):
                        raise RuntimeError(f"KV slot {s} of layer {layer} is attended but was never committed")
                    buf[:, s * T : (s + 1) * T].copy_(self._load(layer, kv, s))
            buf[:, slot * T : slot * T + x.shape[1]].copy_(x)
            if commit:
                self._store(layer, kv, slot, x)
        if commit:
            self.filled[layer, slot] = True
        end = filled * T
        return self.scratch[0][:, :end], self.scratch[1][:, :end]

    def packed_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed)

    def nbytes(self) -> int:
        return self.packed_nbytes() + sum(t.numel() * t.element_size() for t in self.scratch)


def allocate_cache(geometry: CacheGeometry, num_layers: int, batch: int, heads: int, head_dim: int,
                   storage: str = "bf16", device: torch.device | str | None = None,
                   compute_dtype: torch.dtype | None = None, rule: str = DEFAULT_KV_RULE) -> KVCache:
    """A KV cache with any storage: a dense dtype name (bf16, fp16, fp32, fp64) or a quantised format (fp8, nvfp4;
    `rule`: the NVFP4 scale rule). The quantised storages live here, so the model package never depends on
    quantisation."""
    if storage not in QUANTISED:
        return KVCache.allocate(geometry, num_layers, batch, heads, head_dim, storage=storage, device=device)
    args = (num_layers, batch, geometry.num_slots, geometry.chunk_tokens, heads, head_dim)
    return KVCache(geometry, QuantKVStorage(*args, fmt=storage, dtype=compute_dtype or torch.bfloat16, device=device,
                                            rule=rule))
