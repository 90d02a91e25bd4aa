"""SP-aware VAE: halo-windowed encoding (spec 04) and spatially tiled parallel decode, against one device."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longlive.infer.decode import frames_to_uint8, make_decoder
from longlive.parallel.groups import shutdown_parallel
from longlive.parallel.vae_decode import ParallelDecoder, decode_tiles, decoder_halo, split_rows
from longlive.parallel.vae_encode import (
    EXACT_ENCODE_HALO,
    EncodeWindow,
    encode_local,
    encode_window,
    raw_frames_per_rank,
)
from longlive.vae import build_vae

TOL = 1e-5  # tiled vs single-device decode, pixels in [-1, 1] (measured ~3e-6: conv summation order only)


def _randomize(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights (random gains too) so equality checks are not satisfied by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith("gamma") else 0.3 * noise * p.abs().mean().clamp_min(0.1))
    return vae


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _randomize(build_vae("tiny"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---- encode windows (spec 04 table) -------------------------------------------------------------------

# Written out by hand from the formulas, H = 28, sp = 4: L = F/4; h = max(0, r·L − 28), e = (r+1)·L;
# raw [4(h−1), 4(e−1)+1) if h > 0 else [0, 4(e−1)+1); drop = (h > 0) + r·L − h.
WINDOWS = {
    96: [  # L = 24
        EncodeWindow(h=0, e=24, raw_start=0, raw_stop=93, drop=0),
        EncodeWindow(h=0, e=48, raw_start=0, raw_stop=189, drop=24),  # r·L = 24 < H: no pseudo-first
        EncodeWindow(h=20, e=72, raw_start=76, raw_stop=285, drop=29),
        EncodeWindow(h=44, e=96, raw_start=172, raw_stop=381, drop=29),
    ],
    192: [  # L = 48
        EncodeWindow(h=0, e=48, raw_start=0, raw_stop=189, drop=0),
        EncodeWindow(h=20, e=96, raw_start=76, raw_stop=381, drop=29),
        EncodeWindow(h=68, e=144, raw_start=268, raw_stop=573, drop=29),
        EncodeWindow(h=116, e=192, raw_start=460, raw_stop=765, drop=29),
    ],
    384: [  # L = 96 (64 s)
        EncodeWindow(h=0, e=96, raw_start=0, raw_stop=381, drop=0),
        EncodeWindow(h=68, e=192, raw_start=268, raw_stop=765, drop=29),
        EncodeWindow(h=164, e=288, raw_start=652, raw_stop=1149, drop=29),
        EncodeWindow(h=260, e=384, raw_start=1036, raw_stop=1533, drop=29),
    ],
}


@pytest.mark.parametrize("num_latents", sorted(WINDOWS))
def test_encode_window_table(num_latents: int) -> None:
    size = num_latents // 4
    for rank, expected in enumerate(WINDOWS[num_latents]):
        win = encode_window(rank, 4, num_latents, 28)
        assert win == expected
        assert (win.start, win.length) == (rank * size, size)
        assert win.num_raw == 4 * (win.num_encoded - 1) + 1  # a valid causal clip: 1 + 4k frames
        assert win.keep.stop == win.num_encoded  # the kept latents end the window
    counts = raw_frames_per_rank(num_latents, 4, 28)
    assert counts == [w.num_raw for w in WINDOWS[num_latents]]


def test_encode_window_64s_claim() -> None:
    full = 1 + 4 * (384 - 1)
    assert full == 1533
    assert raw_frames_per_rank(384, 4, 28) == [381, 497, 497, 497]
    assert 3.0 < full / max(raw_frames_per_rank(384, 4, 28)) < 3.1


def test_encode_window_errors() -> None:
    with pytest.raises(ValueError, match="split evenly"):
        encode_window(0, 4, 98, 28)
    with pytest.raises(ValueError, match="out of range"):
        encode_window(4, 4, 96, 28)
    with pytest.raises(ValueError, match="halo"):
        encode_window(0, 4, 96, -1)
    with pytest.raises(TypeError):
        encode_window(0, 4, 96.0, 28)  # type: ignore[arg-type]
    assert encode_window(0, 1, 5, 28) == EncodeWindow(0, 5, 0, 17, 0)


def test_encode_local_halo_vs_whole_video(tiny: torch.nn.Module) -> None:
    """Rank 1 of sp = 2 (latents 32..63): exact once the halo covers the causal receptive field (27 latents)."""
    torch.manual_seed(0)
    num, sp = 64, 2
    video = torch.rand(1, 3, 1 + 4 * (num - 1), 16, 32) * 2 - 1
    whole = tiny.encode(video)
    ref = whole[:, :, num // 2 :]
    exact = encode_local(tiny, video, 1, sp, EXACT_ENCODE_HALO)
    assert exact.shape == ref.shape
    assert _rel(exact, ref) < 1e-6  # measured: bit-identical
    assert (encode_local(tiny, video, 1, sp, EXACT_ENCODE_HALO - 1) - ref).abs().max() > 0  # leaks (3e-7 rel)
    assert _rel(encode_local(tiny, video, 1, sp, 20), ref) > 1e-4  # measured 6e-4
    assert _rel(encode_local(tiny, video, 1, sp, 0), ref) > 1e-2  # no halo: caches matter (measured 0.6)
    # Passing only the rank's raw window is the same computation.
    win = encode_window(1, sp, num, EXACT_ENCODE_HALO)
    part = video[:, :, win.raw_start : win.raw_stop]
    assert torch.equal(encode_local(tiny, part, 1, sp, EXACT_ENCODE_HALO, num_latents=num), exact)
    # Rank 0 never needs a halo.
    assert _rel(encode_local(tiny, video, 0, sp, 0), whole[:, :, : num // 2]) < 1e-6
    with pytest.raises(ValueError, match="full video"):
        encode_local(tiny, part[:, :, 1:], 1, sp, EXACT_ENCODE_HALO, num_latents=num)


# ---- tiled decode -------------------------------------------------------------------------------------


def test_decoder_halo_derived() -> None:
    # Pre-attention: conv1 (1) + ResBlock (2); post-attention: 14.25 latent rows → 15 (see vae_decode).
    assert decoder_halo(build_vae("tiny", device="meta")) == (3, 15)
    assert decoder_halo(build_vae("wan2.2", device="meta")) == (3, 15)
    assert split_rows(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match="tiles"):
        split_rows(2, 3)


@pytest.mark.parametrize("tiles", [2, 3])
@pytest.mark.parametrize("chunks", [None, [1, 3], [2, 1, 1]])
def test_decode_tiles_matches_decode(tiny: torch.nn.Module, tiles: int, chunks: list[int] | None) -> None:
    torch.manual_seed(1)
    z = torch.randn(1, 16, 4, 8, 4)  # 128×64 px, tiled along H
    ref = tiny.decode(z)
    out = decode_tiles(tiny, z, tiles, chunks=chunks)
    assert out.shape == ref.shape == (1, 3, 13, 128, 64)
    torch.testing.assert_close(out, ref, atol=TOL, rtol=0)


def test_decode_tiles_w_axis_batch(tiny: torch.nn.Module) -> None:
    torch.manual_seed(2)
    z = torch.randn(2, 16, 3, 3, 7)  # W is the longer side: auto tiles W, uneven 3/2/2
    torch.testing.assert_close(decode_tiles(tiny, z, 3, chunks=[2, 1]), tiny.decode(z), atol=TOL, rtol=0)
    torch.testing.assert_close(decode_tiles(tiny, z, 2, axis="h"), tiny.decode(z), atol=TOL, rtol=0)


def test_decode_halo_is_minimal(tiny: torch.nn.Module) -> None:
    """A frame tall enough that halos do not reach across it: 34 latent rows (544 px), cut at row 17."""
    torch.manual_seed(3)
    z = torch.randn(1, 16, 3, 34, 2)
    ref = tiny.decode(z)
    good = decode_tiles(tiny, z, 2, chunks=[1, 2])
    torch.testing.assert_close(good, ref, atol=TOL, rtol=0)
    # One row short before the attention: the cut's zero padding reaches the core, attention spreads it.
    assert (decode_tiles(tiny, z, 2, halo=(2, 15), chunks=[1, 2]) - ref).abs().max() > 1e-2
    # Short after it: only pixel rows within 4 + 16·(14 − h) of the cut (272) change — the leak fades
    # with distance (halo 14: 3e-7, 11: 1e-5 on these weights), as the receptive-field count predicts.
    short = decode_tiles(tiny, z, 2, halo=(3, 11), chunks=[1, 2])
    diff = (short - good).abs().amax(dim=(0, 1, 2, 4))
    band = 4 + 16 * (14 - 11)
    assert diff[272 - band : 272 + band].max() > 3e-6
    assert diff[: 272 - band].max() <= 1e-6 and diff[272 + band :].max() <= 1e-6


# ---- two real ranks (gloo) ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        d = torch.load(Path(tmp) / "inputs.pt")
        vae = build_vae("tiny")
        vae.load_state_dict(d["state"])
        out: dict[str, list[torch.Tensor | None]] = {}
        for axis in ("auto", "w"):
            dec = ParallelDecoder(vae, axis=axis)
            chunks, start = [], 0
            for n in d["chunks"]:
                chunks.append(dec.decode(d["z"][:, :, start : start + n]))
                start += n
            out[axis] = chunks
        tiles = make_decoder("tiles", vae)  # the decode mode `generate --sp 2 --decode tiles` uses
        start = 0
        for n in d["chunks"]:
            tiles.submit(d["z"][:, :, start : start + n])
            start += n
        out["tiles_mode"] = [tiles.finish(), len(tiles.chunk_times)]
        torch.save(out, Path(tmp) / f"rank{rank}.pt")
    finally:
        shutdown_parallel()


def test_parallel_decoder_two_ranks(tiny: torch.nn.Module, tmp_path: Path) -> None:
    torch.manual_seed(4)
    z = torch.randn(1, 16, 5, 5, 3)  # 80×48 px; H split 3/2 latent rows (uneven: exercises the padding)
    chunks = [2, 3]
    torch.save({"state": tiny.state_dict(), "z": z, "chunks": chunks}, tmp_path / "inputs.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    root, other = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for axis in ("auto", "w"):
        stream, start = tiny.streaming_decoder(), 0
        for n, got, none in zip(chunks, root[axis], other[axis], strict=True):
            ref = stream.decode(z[:, :, start : start + n])
            start += n
            assert none is None
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    # decode=tiles: uint8 frames on the group's first rank only, a rounding step at most from the whole decode
    (frames, landed), (none, none_landed) = root["tiles_mode"], other["tiles_mode"]
    assert none is None and none_landed == 0 and landed == len(chunks)
    want = frames_to_uint8(tiny.decode(z))
    assert frames.shape == want.shape and frames.dtype == torch.uint8
    assert (frames.int() - want.int()).abs().max() <= 1
