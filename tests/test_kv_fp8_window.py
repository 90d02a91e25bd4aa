"""FP8 KV windows that FP8 attention reads as stored (spec 02, "Quantised KV cache"): the FP8 window storage equals the
dense cache quantised with its fixed scale, NVFP4 slots requantised into an E4M3 window, saturation counts, and a
tiny generation through an FP8-reading backend (a CPU stand-in for cudnn-fp8)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from longlive.experiments.spec import from_config
from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model import attention, dit
from longlive.model.attention import FP8Window
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, DenseKVStorage, KVCache
from longlive.model.presets import get_preset
from longlive.quant import e4m3 as e4m3mod
from longlive.quant import kv as kvmod
from longlive.quant.formats import to_e4m3
from longlive.quant.kv import (
    HEADROOM,
    FP8WindowStorage,
    QuantKVStorage,
    allocate_cache,
    kv_saturated_share,
    kv_saturation,
    reset_kv_saturation,
    write_e4m3,
)
from longlive.quant.triton_kernels import triton_available
from longlive.runner.matrix import expand
from longlive.workloads import CellContext
from longlive.workloads import infer as infer_workload

GEO = CacheGeometry(chunk_frames=2, window_frames=10, sink_frames=2, tokens_per_frame=3)  # 5 slots of 6 tokens
T, H, D = GEO.chunk_tokens, 2, 16
GPU = pytest.mark.skipif(not triton_available(), reason="needs a CUDA GPU and Triton")


def quantised(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The reference: x in E4M3 with `scale` (x · (1/scale) in fp32, clamp ±448, RNE), read back as data · scale."""
    return to_e4m3(x.float() * torch.reciprocal(scale)).float() * scale


def rollout(caches: list[KVCache], layers: int = 2, chunks: int = 11, cut: int = 5, seed: int = 0):
    """Drive caches like generate: per chunk 3 denoising forwards and a committing re-run per layer, a scene cut at
    `cut` (pin + clean recache), chunks evicted from the ring. Yields (chunk, layer, commit, k, v, windows)."""
    g = torch.Generator().manual_seed(seed)
    for c in range(chunks):
        for cache in caches:
            cache.begin_chunk(c)
        for step in range(4):
            commit = step == 3
            for cache in caches:
                if commit and c == cut:
                    cache.clear_to_sink()
                cache.committing = commit
            for layer in range(layers):
                k = torch.randn(1, T, H, D, generator=g) * (1 + c)
                v = torch.randn(1, T, H, D, generator=g) * (1 + layer)
                yield c, layer, commit, k, v, [cache.update(layer, k, v) for cache in caches]
            for cache in caches:
                cache.committing = False
                if commit and c == cut:
                    cache.pin_current()


def test_window_equals_dense_window_quantised_with_the_fixed_scale():
    dense = KVCache(GEO, DenseKVStorage(2, 1, GEO.num_slots, T, H, D, dtype=torch.float32))
    fp8 = allocate_cache(GEO, 2, 1, H, D, storage="fp8", fp8_window=True)
    store = fp8.storage
    assert isinstance(store, FP8WindowStorage)
    ptrs = [t.data_ptr() for t in (*store.k, *store.v)]
    first: dict[tuple[int, int], float] = {}
    seen_windows, saturated = set(), 0
    for _c, layer, _commit, k, v, ((kd, vd), (kq, vq)) in rollout([dense, fp8]):
        assert isinstance(kq, FP8Window) and kq.data.dtype == torch.float8_e4m3fn
        for kv, x in enumerate((k, v)):
            first.setdefault((layer, kv), x.abs().max().item())
        # the scale was set by the layer's first write and never moved: amax × HEADROOM / 448
        for kv in range(2):
            want = torch.tensor([first[(layer, kv)] * HEADROOM], dtype=torch.float32) / torch.tensor([448.0])
            assert torch.equal(store.scale[layer, kv], want)
        assert kq.scale.data_ptr() == store.scale[layer, 0].data_ptr()
        # a prefix view of the layer's buffer, as long as the dense window, in SDPA's layout
        assert kq.data.data_ptr() == store.k[layer].data_ptr() and vq.data.data_ptr() == store.v[layer].data_ptr()
        assert kq.shape == kd.shape and kq.data.stride() == store.k[layer].stride()
        assert torch.equal(kq.dequantize(torch.float32), quantised(kd, kq.scale))
        assert torch.equal(vq.dequantize(torch.float32), quantised(vd, vq.scale))
        seen_windows.add(fp8.filled_slots)
        saturated += sum(int(((x * torch.reciprocal(w.scale)).abs() > 448).sum()) for x, w in ((k, kq), (v, vq)))
    assert seen_windows == {1, 2, 3, 4, 5}  # filling, full, and the clean recache's [sink | chunk]
    assert fp8.window_chunks() == [0, 5, 8, 9, 10]  # the pin held chunk 5 through eviction
    assert [t.data_ptr() for t in (*store.k, *store.v)] == ptrs  # written in place
    assert saturated > 0  # K grows with the chunk index beyond the first chunk's headroom
    assert store.saturation() == (saturated, 2 * 11 * 4 * 2 * T * H * D)  # K and V, every forward of every layer


def test_saturation_is_counted_exactly():
    reset_kv_saturation()
    assert kv_saturation() is None and kv_saturated_share() is None  # no FP8 window cache since the reset
    geo = CacheGeometry(chunk_frames=1, window_frames=3, sink_frames=1, tokens_per_frame=2)
    cache = allocate_cache(geo, 1, 1, 1, 4, storage="fp8", fp8_window=True)
    store = cache.storage
    cache.begin_chunk(0)
    x0 = torch.zeros(1, 2, 1, 4)
    x0[0, 0, 0, 0] = 448.0 / HEADROOM  # scale = 1 exactly: x · (1/scale) = x
    cache.update(0, x0, x0)
    assert torch.equal(store.scale, torch.ones_like(store.scale))
    cache.begin_chunk(1)
    x1 = torch.tensor([[[[448.0, -448.0, 448.5, -1e4]], [[float("inf"), float("nan"), 3.0, 500.0]]]])
    k, _ = cache.update(0, x1, torch.zeros_like(x1))
    assert store.saturation() == (4, 32)  # 448.5, -1e4, inf, 500; not ±448, NaN or 3; written: 4 chunks of 8
    got = k.dequantize(torch.float32)[0, 2:, 0].flatten()
    assert got[:5].tolist() == [448.0, -448.0, 448.0, -448.0, 448.0] and got[5].isnan()
    assert got[6:].tolist() == [3.0, 448.0]
    assert kv_saturation() == (4, 32) and kv_saturated_share() == 4 / 32
    del cache, store, k  # freed caches still count until the next reset
    assert kv_saturation() == (4, 32)
    other = allocate_cache(geo, 1, 1, 1, 4, storage="fp8", fp8_window=True)
    other.begin_chunk(0)
    other.update(0, x0, torch.full_like(x0, 1e9))  # V's scale comes from this chunk: nothing saturates
    assert kv_saturation() == (4, 48)
    reset_kv_saturation()
    assert kv_saturation() is None


def test_zero_first_chunk_leaves_the_scale_unset_until_a_nonzero_one():
    cache = allocate_cache(GEO, 1, 1, H, D, storage="fp8", fp8_window=True)
    store = cache.storage
    cache.begin_chunk(0)
    z = torch.zeros(1, T, H, D)
    k, v = cache.update(0, z, z)
    assert torch.equal(store.scale, torch.ones_like(store.scale)) and not store.scale_set.any()
    assert torch.equal(k.dequantize(torch.float32), z)
    cache.begin_chunk(1)
    x = torch.randn(1, T, H, D) * 1e-3
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")  # a NaN (or Inf) amax does not set the scale either
    k, v = cache.update(0, x, bad)
    scale = (x.abs().max() * HEADROOM).reshape(1) / torch.tensor([448.0])
    assert torch.equal(store.scale[0, 0], scale) and torch.equal(store.scale[0, 1], torch.ones(1))
    assert store.scale_set[0].flatten().tolist() == [True, False]
    assert torch.equal(k.dequantize(torch.float32)[:, :T], z)  # the zero chunk reads the same with any scale
    err = (k.dequantize(torch.float32)[:, T:] - x).abs()
    assert (err <= x.abs() * 2**-4 + scale * 2**-10).all()


def test_nvfp4_slots_in_an_fp8_window():
    """Past NVFP4 slots dequantised (to fp32) and the current chunk, requantised into an E4M3 window whose scale is
    max(stored amax of the past slots, this chunk's amax) / 448."""
    geo = CacheGeometry(chunk_frames=1, window_frames=4, sink_frames=1, tokens_per_frame=5)
    # the BF16-path storage in fp32: its window is the exact fp32 dequantisation, with the current chunk as is
    ref = allocate_cache(geo, 1, 1, H, D, storage="nvfp4", compute_dtype=torch.float32)
    win = allocate_cache(geo, 1, 1, H, D, storage="nvfp4", compute_dtype=torch.float32, fp8_window=True)
    assert isinstance(win.storage, QuantKVStorage) and win.storage.fp8_window
    g = torch.Generator().manual_seed(3)
    n = geo.chunk_tokens
    for c in range(7):
        k = torch.randn(1, n, H, D, generator=g) * (1 + c % 3)
        v = torch.randn(1, n, H, D, generator=g) * 0.1
        for cache in (ref, win):
            cache.begin_chunk(c)
        for commit in (False, True):
            for cache in (ref, win):
                cache.committing = commit
            windows = ref.update(0, k, v), win.update(0, k, v)
            slot, filled, st = win.current_slot, win.filled_slots, win.storage
            for kv, x in enumerate((k, v)):
                want, got = windows[0][kv], windows[1][kv]
                assert isinstance(got, FP8Window) and got.shape == want.shape == (1, filled * n, H, D)
                past = [s for s in range(filled) if s != slot]
                amax = torch.stack([x.abs().max(), *[st.amax[0, kv, s, 0] for s in past]]).max()
                assert torch.equal(got.scale, amax.reshape(1) / torch.tensor([448.0]))
                assert torch.equal(got.dequantize(torch.float32), quantised(want, got.scale))
                # within E4M3 rounding (half a step: 2^-4 relative, 2^-10 · scale below the normal range)
                err = (got.dequantize(torch.float32) - want).abs()
                assert (err <= want.abs() * 2**-4 + got.scale * 2**-10).all()
    assert win.storage.nbytes() == ref.storage.nbytes() - 2 * 4 * n * H * D * (4 - 1)  # fp32 → E4M3 scratch


def test_allocation_and_bytes():
    dense = allocate_cache(GEO, 3, 2, H, D, storage="bf16", fp8_window=True)  # the backend quantises dense windows
    assert isinstance(dense.storage, DenseKVStorage)
    plain = allocate_cache(GEO, 3, 2, H, D, storage="fp8")
    assert isinstance(plain.storage, QuantKVStorage) and plain.storage.fmt == "fp8" and not plain.storage.fp8_window
    fp8 = allocate_cache(GEO, 3, 2, H, D, storage="fp8", fp8_window=True)
    assert fp8.storage.nbytes() == dense.storage.nbytes() // 2 + 3 * 2 * 4  # half of BF16, plus one scale per K/V
    nv = allocate_cache(GEO, 3, 2, H, D, storage="nvfp4", fp8_window=True)
    scratch = 2 * 2 * GEO.num_slots * T * H * D  # K and V, one byte per element, shared by the layers
    assert nv.storage.nbytes() == nv.storage.packed_nbytes() + scratch
    with pytest.raises(ValueError, match="fp8_window here is for nvfp4"):
        QuantKVStorage(1, 1, 3, T, H, D, fmt="fp8", fp8_window=True)
    with pytest.raises(ValueError, match="must be the same"):
        write_e4m3(fp8.storage.k[0][:, :T], torch.zeros(1, T + 1, H, D), torch.ones(1))


def test_scales_belong_to_each_cache():
    a = allocate_cache(GEO, 1, 1, H, D, storage="fp8", fp8_window=True)
    b = allocate_cache(GEO, 1, 1, H, D, storage="fp8", fp8_window=True)
    for cache, m in ((a, 1.0), (b, 8.0)):
        cache.begin_chunk(0)
        cache.update(0, torch.full((1, T, H, D), m), torch.full((1, T, H, D), m))
    assert torch.equal(b.storage.scale, a.storage.scale * 8)


# -- the Triton write kernel -----------------------------------------------------------------------------------------
_INTERPRET_CHECK = """
import torch
from longlive.model.kv_cache import heads_first_buffer
from longlive.quant import e4m3
torch.manual_seed(0)
for D, dtype in ((16, torch.bfloat16), (32, torch.float32), (64, torch.float16)):
    B, T, H = 2, 5, 3
    x = (torch.randn(B, T, H, D + 8) * 30).to(dtype)[..., 4:4 + D]  # strided rows, last stride 1
    x[0, 0, 0, :5] = torch.tensor([1e4, -1e4, 1e-7, -0.0, 2.0**-12])
    inv = torch.tensor([100.0 / 3.0])
    ref, got = (heads_first_buffer(B, 20, H, D, torch.float8_e4m3fn, "cpu") for _ in range(2))
    n_ref, n_got = torch.zeros((), dtype=torch.int64), torch.zeros((), dtype=torch.int64)
    e4m3.write_e4m3(ref[:, 7:7 + T], x, inv, n_ref)
    dst = got[:, 7:7 + T]
    rows, br = B * T * H, 4096 // D
    e4m3._write_kernel()[(-(-rows // br),)](x, dst.view(torch.uint8), inv, n_got, rows, T, H, *x.stride()[:3],
                                            *dst.stride()[:3], D=D, BLOCK_R=br, COUNT=True)
    assert n_ref.item() == n_got.item() > 0, (n_ref, n_got)
    assert torch.equal(ref.view(torch.uint8), got.view(torch.uint8)), D
print("ok")
"""


def test_triton_write_kernel_in_the_interpreter_equals_the_torch_ops():
    """The kernel's logic on the CPU (Triton's interpreter, in a fresh process so no compiled kernel is cached)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _INTERPRET_CHECK], env=env, cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("d, dtype", [(128, torch.bfloat16), (64, torch.float32), (128, torch.float16)])
def test_triton_write_equals_torch_ops_on_gpu(monkeypatch, d, dtype):
    g = torch.Generator(device="cuda").manual_seed(d)
    B, t, h = 2, 880, 6
    x = (torch.randn(B, t, h, d, generator=g, device="cuda") * 50).to(dtype)
    x.view(-1)[:4] = torch.tensor([1e5, -1e5, 1e-9, -0.0], device="cuda")
    strided = torch.randn(B, h, t, d, device="cuda").to(dtype).transpose(1, 2)  # a heads-first input, too
    inv = torch.tensor([3.0], device="cuda")
    for inp in (x, strided):
        out, counts = [], []
        for triton_on in (True, False):
            monkeypatch.setattr(e4m3mod, "_use_triton", lambda *_, on=triton_on: on)
            buf = torch.zeros(B, h, 3 * t, d, dtype=torch.float8_e4m3fn, device="cuda").transpose(1, 2)
            n = torch.zeros((), dtype=torch.int64, device="cuda")
            write_e4m3(buf[:, t : 2 * t], inp, inv, n)
            out.append(buf.view(torch.uint8).cpu())
            counts.append(n.item())
        assert counts[0] == counts[1]
        assert torch.equal(out[0], out[1])


@pytest.mark.gpu
@GPU
def test_fp8_window_storages_on_gpu_equal_cpu():
    """On CUDA (Triton writes, scales on the device) the storages give the CPU's bytes, scales and counts."""
    g = torch.Generator().manual_seed(1)
    pairs = [[allocate_cache(GEO, 2, 1, H, 128, storage=s, fp8_window=True, device=d) for d in ("cpu", "cuda")]
             for s in ("fp8", "nvfp4")]
    for c in range(7):
        k, v = torch.randn(1, T, H, 128, generator=g) * (1 + c), torch.randn(1, T, H, 128, generator=g)
        for pair in pairs:
            got = []
            for cache, dev in zip(pair, ("cpu", "cuda"), strict=True):
                cache.begin_chunk(c)
                cache.committing = c % 2 == 0 or pair is pairs[1]  # NVFP4 attends committed slots only
                got.append(cache.update(1, k.to(dev), v.to(dev)))
            for a, b in zip(*got, strict=True):
                assert torch.equal(a.scale, b.scale.cpu())
                assert torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8).cpu())
    assert pairs[0][0].storage.saturation() == pairs[0][1].storage.saturation()


# -- end to end: a tiny generation through an FP8-reading backend -----------------------------------------------------
def _cpu_fp8_backend(q, k, v):
    """A CPU stand-in for cudnn-fp8: dequantise FP8Windows, math SDPA."""
    assert isinstance(k, FP8Window) and isinstance(v, FP8Window)
    return attention.sdpa(q, k.dequantize(q.dtype), v.dequantize(q.dtype), "math")


@pytest.fixture
def fp8_backend(monkeypatch):
    monkeypatch.setitem(attention._LOWP, "cudnn-fp8", (_cpu_fp8_backend, lambda device: None))
    monkeypatch.setattr(dit, "sdpa_backend", lambda name: "math")  # cross-attention: cuDNN BF16 on a GPU
    allocated = []
    real = kvmod.FP8WindowStorage.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        allocated.append(self)

    monkeypatch.setattr(kvmod.FP8WindowStorage, "__init__", spy)
    return allocated


@pytest.fixture(scope="module")
def tiny():
    cfg = get_preset("tiny")
    return build_model(cfg, seed=0), cfg


@pytest.fixture(scope="module")
def bf16_backend_latents(tiny):
    """The kv_quant=fp8 run through the BF16-path backend: the per-row FP8 cache dequantised for attention."""
    return _latents(tiny[0], "math", "fp8")


def _latents(model, attn: str, kv_quant: str, frames: int = 6) -> torch.Tensor:
    model.attn_backend = attn
    try:
        spec = GenerationSpec(prompts=["x"], frames=frames, steps=2, seed=1, kv_quant=kv_quant)
        g = torch.Generator().manual_seed(0)
        e = [torch.randn(1, model.cfg.text_len, model.cfg.text_dim, generator=g)]
        return generate(model, spec, e).latents
    finally:
        model.attn_backend = "math"


@pytest.mark.parametrize("kv_quant", ["fp8", "nvfp4"])
def test_generation_through_an_fp8_backend(tiny, bf16_backend_latents, fp8_backend, kv_quant):
    model, _ = tiny
    reference = bf16_backend_latents
    _latents(model, "math", "fp8", frames=model.cfg.chunk_frames)
    assert not fp8_backend  # a BF16 backend keeps the per-row FP8 storage
    reset_kv_saturation()
    got = _latents(model, "cudnn-fp8", kv_quant)
    assert len(fp8_backend) == (kv_quant == "fp8")  # the FP8 window storage is what fp8 allocates
    rel = ((got - reference).norm() / reference.norm()).item()
    assert 0 < rel < 0.03, rel
    share = kv_saturated_share()
    assert (share is None) if kv_quant == "nvfp4" else (share == 0.0)


def test_kv_saturated_share_reaches_the_infer_row(tiny, fp8_backend, monkeypatch, tmp_path):
    """The infer workload resets the counts before its timed run and puts the share in the row."""
    model, cfg = tiny
    cells = expand("smoke", ["matrices=[]", "steps=2", "sp=1", "decode=streaming", "kv_quant=fp8", "precision=fp32",
                             "roofline=false", "repeats=1"])  # one run: the stand-in pipeline has no decoder
    spec = from_config(next(c for c in cells if c.config["workload"]["name"] == "infer").config)
    assert not spec.profile
    pipe = types.SimpleNamespace(model=model, linear_quant_source=None)

    def build(req):
        _latents(model, "cudnn-fp8", "fp8", frames=cfg.chunk_frames)  # like a compile warm-up: not counted
        return pipe

    def run(p, out):
        cache = allocate_cache(GEO, 1, 1, H, D, storage="fp8", fp8_window=True)
        cache.begin_chunk(0)
        x = torch.ones(1, T, H, D)
        cache.update(0, x, x)
        cache.begin_chunk(1)
        cache.update(0, x * 5, x)  # beyond 448 · scale = 4: every K element saturates
        return types.SimpleNamespace(is_main=True, metrics={"kv_cache_gb": 0.0}, chunk_ms=[], windows=[], notes=[],
                                     timing_definition={}, artifacts={}, video=None)

    monkeypatch.setattr(infer_workload, "build", build)
    monkeypatch.setattr(infer_workload, "run", run)
    row = infer_workload.InferWorkload().run(spec, CellContext(out=tmp_path, reference_dir=None))
    assert row["kv_saturated_share"] == (T * H * D) / (4 * T * H * D)
