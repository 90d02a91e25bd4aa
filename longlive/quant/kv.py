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

With an attention backend that reads FP8 (`longlive.model.attention.reads_fp8`), `allocate_cache(fp8_window=True)`
changes what attention is handed:
- fp8: `FP8WindowStorage`, heads-first E4M3 buffers written by every forward like the dense storage, one fixed scale
  per (layer, K/V); the window is a view of the buffer, so nothing is dequantised.
- nvfp4: the packed slots as above, but the scratch window is E4M3 with one scale per call (the window's amax / 448),
  so attention reads half the scratch bytes and the backend does not quantise K/V again.
Both return `FP8Window`s. With a BF16 backend the storages above are unchanged.
"""

from __future__ import annotations

import math
import weakref

import torch

from longlive.model.attention import FP8Window
from longlive.model.kv_cache import QUANTISED, CacheGeometry, KVCache, heads_first_buffer
from longlive.quant import kernels
from longlive.quant.e4m3 import abs_max, e4m3_max, scale_for, write_e4m3
from longlive.quant.tensors import FP8Tensor, NVFP4Tensor

DEFAULT_KV_RULE = "mse"
"""The release's `kv_quant_scale_rule` default: Four-over-Six with the lower squared error per block."""


class QuantKVStorage:
    """Packed slots (see the module docstring). fp8_window (NVFP4 only): the scratch window is E4M3 and `attend`
    returns `FP8Window`s, for an attention backend that reads FP8."""

    def __init__(self, num_layers: int, batch: int, num_slots: int, chunk_tokens: int, heads: int, head_dim: int,
                 *, fmt: str = "nvfp4", dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None,
                 rule: str = DEFAULT_KV_RULE, fp8_window: bool = False):
        if fmt not in ("fp8", "nvfp4"):
            raise ValueError(f"unknown KV quantisation {fmt!r}; choose fp8 or nvfp4")
        if fmt == "nvfp4" and head_dim % 16:
            raise ValueError(f"NVFP4 KV needs head_dim divisible by 16, got {head_dim}")
        if fp8_window and fmt != "nvfp4":
            raise ValueError("an FP8 window over per-row FP8 slots is FP8WindowStorage; fp8_window here is for nvfp4")
        self.fmt, self.rule, self.dtype, self.fp8_window = fmt, rule, dtype, fp8_window
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
        args = (batch, S * chunk_tokens, heads, head_dim, torch.float8_e4m3fn if fp8_window else dtype, device)
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

    def _load(self, layer: int, kv: int, slot: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        rows = self.batch * self.chunk_tokens * self.heads
        dtype = dtype or self.dtype
        if self.fmt == "nvfp4":
            q = NVFP4Tensor(self.values[layer, kv, slot], self.scales[layer, kv, slot], self.amax[layer, kv, slot],
                            self.gscale[layer, kv, slot], (rows, self.head_dim), self.rule)
            out = kernels.dequantize_nvfp4(q, dtype)
        else:
            q = FP8Tensor(self.data[layer, kv, slot], self.scale[layer, kv, slot], (rows, self.head_dim), "row")
            out = kernels.dequantize_fp8(q, dtype)
        return out.view(self.batch, self.chunk_tokens, self.heads, self.head_dim)

    # -- KVStorage -----------------------------------------------------------------------------------------
    def attend(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
               commit: bool) -> tuple[torch.Tensor, torch.Tensor] | tuple[FP8Window, FP8Window]:
        if self.fp8_window:
            return self._attend_fp8(layer, slot, filled, k, v, commit)
        T = self.chunk_tokens
        for kv, (x, buf) in enumerate(zip((k, v), self.scratch, strict=True)):
            for s in range(filled):
                if s != slot:
                    self._check_committed(layer, s)
                    buf[:, s * T : (s + 1) * T].copy_(self._load(layer, kv, s))
            buf[:, slot * T : slot * T + x.shape[1]].copy_(x)
            if commit:
                self._store(layer, kv, slot, x)
        if commit:
            self.filled[layer, slot] = True
        end = filled * T
        return self.scratch[0][:, :end], self.scratch[1][:, :end]

    def _check_committed(self, layer: int, s: int) -> None:
        if not bool(self.filled[layer, s]):  # a host tensor: no device sync
            raise RuntimeError(f"KV slot {s} of layer {layer} is attended but was never committed")

    def _attend_fp8(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
                    commit: bool) -> tuple[FP8Window, FP8Window]:
        """The window in E4M3 with one scale = max(stored amax of the past slots, this chunk's amax) / 448.

        A dequantised NVFP4 value never exceeds its slot's amax (the block scale is clamped to 448 = the scale that
        maps the amax block to the top code, modulo one fp32 rounding), so this scale saturates nothing. Past slots are
        dequantised to fp32 (not the compute dtype: no double rounding) and requantised into the scratch; the current
        chunk is quantised into its slot. Two passes per past slot (the NVFP4 dequantiser, then `write_e4m3`): fusing
        them would need a new kernel in triton_kernels.
        """
        T = self.chunk_tokens
        past = [s for s in range(filled) if s != slot]
        for s in past:
            self._check_committed(layer, s)
        windows = []
        for kv, (x, buf) in enumerate(zip((k, v), self.scratch, strict=True)):
            stored = self.amax[layer, kv]
            amax = torch.cat((stored[:slot], stored[slot + 1 : filled], abs_max(x).reshape(1, 1))).amax().reshape(1)
            scale = scale_for(amax)
            inv = torch.reciprocal(scale)
            for s in past:
                deq = self._load(layer, kv, s, torch.float32)
                write_e4m3(buf[:, s * T : (s + 1) * T], deq, inv)
            write_e4m3(buf[:, slot * T : slot * T + x.shape[1]], x, inv)
            if commit:
                self._store(layer, kv, slot, x)
            windows.append(FP8Window(buf[:, : filled * T], scale))
        if commit:
            self.filled[layer, slot] = True
        return windows[0], windows[1]

    def packed_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.packed)

    def nbytes(self) -> int:
        return self.packed_nbytes() + sum(t.numel() * t.element_size() for t in self.scratch)


HEADROOM = 4.0
"""FP8WindowStorage's scale = first amax × HEADROOM / 448: the first chunk's largest |K| or |V| lands at 448 / 4 = 112.

Why 4: the scale is fixed at a layer's first write (the first denoising step of chunk 0), and later chunks, the clean
re-run and scene cuts can carry larger values; anything beyond 448 · scale saturates. Headroom is cheap in E4M3: the
relative rounding error (≤ 2⁻⁴) is the same everywhere in the normal range [2⁻⁶, 448], so a smaller scale-up costs
no precision for values that are in range, only range at the small end: values below HEADROOM · amax / (448 · 2⁶) =
amax / 7168 become subnormal (absolute error ≤ 2⁻¹⁰ · scale), which for attention logits and values is noise. A
power of two keeps amax × HEADROOM exact. Measured on the tiny preset (CPU, 30 chunks, three prompts and a scene cut,
4 steps): the largest K/V amax of any later write was at most 1.78× the layer's first write with the shipped weights
(1.43× with random ones), so 4 leaves about 2× beyond that; `FP8WindowStorage.saturation` counts what it clips
anyway (`kv_saturated_share` in the infer row), which is how a larger model's rollout checks the choice.
"""

# -- saturation counts of this process's FP8 window caches ---------------------------------------------------------
class _Counts:
    """Saturated elements (a device tensor, added to without a host sync) and written elements (a host count)."""

    def __init__(self, device: torch.device | str | None):
        self.saturated = torch.zeros((), dtype=torch.int64, device=device)
        self.written = 0


_LIVE: dict[int, _Counts] = {}  # id(storage) -> its counts, for FP8 window caches allocated since the last reset
_RETIRED: list[_Counts] = []  # counts of such caches that were freed since (one entry per device)


def _register(storage: FP8WindowStorage) -> None:
    key = id(storage)
    _LIVE[key] = storage.counts
    # the storage is freed when its generation ends; its counts are kept (not at interpreter exit: nobody reads them)
    weakref.finalize(storage, _retire, key).atexit = False


def _retire(key: int) -> None:
    counts = _LIVE.pop(key, None)
    if counts is None:  # counted before a reset
        return
    total = next((c for c in _RETIRED if c.saturated.device == counts.saturated.device), None)
    if total is None:
        _RETIRED.append(counts)
    else:
        total.saturated.add_(counts.saturated)
        total.written += counts.written


def reset_kv_saturation() -> None:
    """Forget the saturation counts so far (the infer workload calls this just before its timed generation)."""
    _LIVE.clear()
    _RETIRED.clear()


def kv_saturation() -> tuple[int, int] | None:
    """(saturated, written) elements over every FP8WindowStorage allocated in this process since the last
    `reset_kv_saturation`, freed or not; None if there was none. Reads the device counters (one sync each)."""
    counts = [*_RETIRED, *_LIVE.values()]
    if not counts:
        return None
    return sum(int(c.saturated.item()) for c in counts), sum(c.written for c in counts)


def kv_saturated_share() -> float | None:
    """The infer row's `kv_saturated_share`: saturated / written elements of the FP8 window caches (None: none ran)."""
    counts = kv_saturation()
    if counts is None:
        return None
    return counts[0] / counts[1] if counts[1] else 0.0


class FP8WindowStorage:
    """K/V in E4M3 that an FP8 attention backend reads as stored: [B, slots·chunk_tokens, H, D] heads-first buffers per
    layer, like `DenseKVStorage`, in half its bytes.

    Every forward writes its chunk into its slot (the next forward overwrites it) and the window is a prefix view, so
    nothing is ever dequantised. One scale per (layer, K/V), a one-element device tensor: set from the layer's first
    write with a nonzero finite amax, to amax · HEADROOM / 448, then fixed, so every slot of a window shares it. It is
    set on the device (a flag and `torch.where`, no host sync); until then it is 1, which a zero chunk does not care
    about. Values beyond 448 · scale saturate and are counted (`saturation`). Scales and counts belong to this cache:
    `generate` allocates a new cache per generation.
    """

    def __init__(self, num_layers: int, batch: int, num_slots: int, chunk_tokens: int, heads: int, head_dim: int,
                 *, device: torch.device | str | None = None, headroom: float = HEADROOM):
        self.chunk_tokens, self.headroom = chunk_tokens, headroom
        args = (batch, num_slots * chunk_tokens, heads, head_dim, torch.float8_e4m3fn, device)
        self.k = [heads_first_buffer(*args) for _ in range(num_layers)]
        self.v = [heads_first_buffer(*args) for _ in range(num_layers)]
        self.scale = torch.ones((num_layers, 2, 1), dtype=torch.float32, device=device)
        self.scale_set = torch.zeros((num_layers, 2, 1), dtype=torch.bool, device=device)
        self.counts = _Counts(device)
        _register(self)

    def _update_scale(self, layer: int, kv: int, x: torch.Tensor) -> None:
        """Set the scale from this chunk if it is not set yet and the chunk's amax is nonzero and finite."""
        amax = abs_max(x).reshape(1)
        ok = (amax > 0) & (amax < math.inf)  # NaN fails both
        take = ok & ~self.scale_set[layer, kv]
        candidate = amax * self.headroom / e4m3_max(amax.device)
        self.scale[layer, kv].copy_(torch.where(take, candidate, self.scale[layer, kv]))
        self.scale_set[layer, kv].logical_or_(ok)

    def attend(self, layer: int, slot: int, filled: int, k: torch.Tensor, v: torch.Tensor,
               commit: bool) -> tuple[FP8Window, FP8Window]:
        lo, n = slot * self.chunk_tokens, k.shape[1]
        for kv, (x, buf) in enumerate(((k, self.k[layer]), (v, self.v[layer]))):
            self._update_scale(layer, kv, x)
            write_e4m3(buf[:, lo : lo + n], x, torch.reciprocal(self.scale[layer, kv]), self.counts.saturated)
            self.counts.written += x.numel()
        end = filled * self.chunk_tokens
        return (FP8Window(self.k[layer][:, :end], self.scale[layer, 0]),
                FP8Window(self.v[layer][:, :end], self.scale[layer, 1]))

    def saturation(self) -> tuple[int, int]:
        """(saturated, written) elements over every write so far (K and V, every forward; one host sync)."""
        return int(self.counts.saturated.item()), self.counts.written

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v, self.scale))


def allocate_cache(geometry: CacheGeometry, num_layers: int, batch: int, heads: int, head_dim: int,
                   storage: str = "bf16", device: torch.device | str | None = None,
                   compute_dtype: torch.dtype | None = None, rule: str = DEFAULT_KV_RULE,
                   fp8_window: bool = False) -> KVCache:
    """A KV cache with any storage: a dense dtype name (bf16, fp16, fp32, fp64) or a quantised format (fp8, nvfp4;
    `rule`: the NVFP4 scale rule). The quantised storages live here, so the model package never depends on
    quantisation.

    fp8_window: the attention backend reads FP8 (`reads_fp8(model.attn_backend)`). Then fp8 is an `FP8WindowStorage`
    and nvfp4 hands out an E4M3 window; dense storages ignore it (the backend quantises their window itself)."""
    if storage not in QUANTISED:
        return KVCache.allocate(geometry, num_layers, batch, heads, head_dim, storage=storage, device=device)
    args = (num_layers, batch, geometry.num_slots, geometry.chunk_tokens, heads, head_dim)
    if fp8_window and storage == "fp8":
        return KVCache(geometry, FP8WindowStorage(*args, device=device))
    return KVCache(geometry, QuantKVStorage(*args, fmt=storage, dtype=compute_dtype or torch.bfloat16, device=device,
                                            rule=rule, fp8_window=fp8_window))
