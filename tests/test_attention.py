"""Attention backends: explicit choice or a clear error; FlexAttention block-causal equals a dense mask."""

import pytest
import torch
import torch.nn.functional as F

import longlive.infer.assemble  # noqa: F401  (the import under test in the last test)
from longlive.model import attention
from longlive.model.attention import BACKENDS, block_causal_mask_fn, flex_block_causal, resolve_backend, sdpa
from longlive.names import ATTN_LOWP


def test_resolve_backend_on_cpu():
    assert resolve_backend("auto", "cpu") == "math"
    assert resolve_backend("math", "cpu") == "math"
    for gpu_only in ("cudnn", "flash", "efficient"):
        with pytest.raises(ValueError, match=f"{gpu_only}' needs a CUDA device"):
            resolve_backend(gpu_only, "cpu")
    with pytest.raises(ValueError, match="unknown attention backend 'fa9'"):
        resolve_backend("fa9", "cpu")
    assert set(BACKENDS) == {"auto", "math", "flash", "efficient", "cudnn", "cudnn-fp8", "int8-fp8",
                             "cudnn-fp8-emulated", "int8-fp8-emulated"}


def test_sdpa_on_strided_cache_views_matches_reference():
    torch.manual_seed(0)
    q = torch.randn(2, 6, 3, 8, dtype=torch.float64)
    cache = torch.randn(2, 20, 3, 8, dtype=torch.float64)
    k, v = cache[:, :12], cache[:, 8:]  # views with the cache's strides
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    torch.testing.assert_close(sdpa(q, k, v, "math"), ref)


def test_flex_block_causal_equals_dense_mask():
    torch.manual_seed(1)
    tokens_per_frame, chunk_frames, chunks = 4, 2, 3
    L = tokens_per_frame * chunk_frames * chunks
    q, k, v = (torch.randn(1, L, 2, 16) for _ in range(3))
    idx = torch.arange(L)
    chunk = idx // (tokens_per_frame * chunk_frames)
    dense = chunk[None, :] <= chunk[:, None]  # a query sees its own chunk and every earlier one
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=dense)
    out = flex_block_causal(q, k, v, tokens_per_frame, chunk_frames)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    mask_mod = block_causal_mask_fn(tokens_per_frame, chunk_frames)
    assert bool(mask_mod(0, 0, torch.tensor(8), torch.tensor(15))) and not bool(
        mask_mod(0, 0, torch.tensor(7), torch.tensor(8))
    )


def test_the_assembler_registers_the_low_precision_backends() -> None:
    """A sweep cell or `generate` reaches the low-precision kernels through `infer.assemble`, so importing it must
    register them (a GPU run once failed with 'not registered' because nothing imported longlive.quant.attention)."""
    assert set(attention._LOWP) == set(ATTN_LOWP)
