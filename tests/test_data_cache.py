"""Folder samples encoded once: the latent cache is read back on later passes without decoding a video, and at
sp = 2 each rank encodes only its halo window while the cache gets exactly the sp = 1 latents.

Kept apart from `test_data_folder.py` so the two spawned ranks import only the data layer (not the CLI)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longlive.output import write_mp4
from longlive.parallel.groups import shutdown_parallel
from longlive.parallel.vae_encode import RELEASE_HALO, encode_window
from longlive.text import EmbeddingCache
from longlive.train.data import (
    SCENE_CUT_PREFIX,
    FolderOptions,
    FolderVideos,
    LatentCache,
    training_samples,
    write_procedural_folder,
)
from longlive.vae import build_vae


def _sample(root: Path, name: str, lengths: list[int]) -> None:
    """A sample folder in the release layout: one mp4 + json caption per shot (flat grey frames)."""
    for k, n in enumerate(lengths):
        write_mp4(np.full((n, 16, 16, 3), 40 + 60 * k, dtype=np.uint8), root / "video" / name / f"{k}.mp4", 24)
        (root / "caption" / name).mkdir(parents=True, exist_ok=True)
        (root / "caption" / name / f"{k}.json").write_text(json.dumps({"caption": f"shot {k} of {name}"}))


class CountingVAE:
    """A VAE that counts encode calls and the raw frames each one saw (a cache hit must not call it)."""

    def __init__(self, vae: torch.nn.Module, identity: str) -> None:
        self.vae, self.stride, self.identity, self.raw = vae, vae.stride, identity, []

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.raw.append(video.shape[2])
        return self.vae.encode(video)


class StubText:
    """Text encoder stand-in: the latent path is under test, and the real one would import transformers per rank."""

    identity, device, max_len, dim = "stub-text", "cpu", 4, 8

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([torch.full((self.max_len, self.dim), float(len(p))) for p in prompts])


def _randomized_vae(seed: int = 0) -> torch.nn.Module:
    """The tiny Wan VAE with non-trivial weights, so halo and whole-video encodes can only agree by being equal."""
    torch.manual_seed(seed)
    vae = build_vae("tiny")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if name.endswith("gamma") else 0.3 * noise * p.abs().mean().clamp_min(0.1))
    return vae


def test_samples_are_encoded_once_and_read_back(tmp_path: Path) -> None:
    """A second pass reads every latent from the cache (the VAE is not called, no video decoded) and gives the
    same tensors; the sample dicts carry per-chunk prompts and the real latent count."""
    _sample(tmp_path / "d", "a", [9, 20])
    _sample(tmp_path / "d", "b", [13, 6])
    ds = FolderVideos(tmp_path / "d", 32, 32, 24, frames=6, chunk_frames=2,
                      options=FolderOptions(allow_padding=True))
    vae = CountingVAE(build_vae("tiny"), "tiny-vae-test")
    lat, emb = LatentCache(tmp_path / "lat"), EmbeddingCache(tmp_path / "emb")
    first = list(training_samples(ds, vae, StubText(), lat, emb, num_latents=6))
    assert vae.raw == [21, 21] and (lat.hits, lat.misses) == (0, 2)
    a, b = first
    assert a["latents"].shape == (1, 16, 6, 2, 2) and a["num_valid_latent_frames"] == 6
    assert a["prompts"] == ["shot 0 of a", SCENE_CUT_PREFIX + "shot 1 of a", "shot 1 of a"]
    assert a["frame_prompt"].tolist() == [0, 0, 1, 1, 2, 2] and a["prompt_embeds"].shape == (3, 4, 8)
    assert b["num_valid_latent_frames"] == 4 and b["prompts"] == ["shot 0 of b"]
    assert torch.equal(a["latents"][0], vae.vae.encode(ds.read(0)[None])[0])
    ds.read = None  # a cache hit must not decode the video
    again = list(training_samples(ds, vae, StubText(), lat, emb, num_latents=6))
    assert vae.raw == [21, 21] and (lat.hits, lat.misses) == (2, 2)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(first, again, strict=True))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sp_worker(rank: int, port: int, tmp: str, num_latents: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        root = Path(tmp)
        vae = build_vae("tiny")
        vae.load_state_dict(torch.load(root / "vae.pt"))
        vae = CountingVAE(vae, "halo-test-vae")
        ds = FolderVideos(root / "d", 16, 32, 24, frames=num_latents, chunk_frames=2)
        lat = LatentCache(root / "sp2")
        got = list(training_samples(ds, vae, StubText(), lat, EmbeddingCache(root / f"emb{rank}"),
                                    num_latents=num_latents, sp_group=dist.group.WORLD))
        again = list(training_samples(ds, vae, StubText(), lat, EmbeddingCache(root / f"emb{rank}"),
                                      num_latents=num_latents, sp_group=dist.group.WORLD))
        torch.save({"latents": [s["latents"] for s in got], "raw": vae.raw, "hits": lat.hits,
                    "again": [s["latents"] for s in again]}, root / f"rank{rank}.pt")
    finally:
        shutdown_parallel()


def test_sp2_halo_encode_fills_the_cache_with_the_sp1_latents(tmp_path: Path) -> None:
    """Two gloo ranks: each encodes only its halo window (spec 04), the group gathers, and the cache entry equals the
    sp = 1 encode (a halo of 28 latents covers the encoder's receptive field); a second pass is all hits."""
    num = 64  # L = 32 > the 28-latent halo, so rank 1's window starts past frame 0 (pseudo-first latent)
    write_procedural_folder(tmp_path / "d", 1, shots=1, frames_per_shot=1 + 4 * (num - 1), height=16, width=32)
    vae = _randomized_vae()
    torch.save(vae.state_dict(), tmp_path / "vae.pt")
    mp.spawn(_sp_worker, args=(_free_port(), str(tmp_path), num), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["raw"] == [encode_window(0, 2, num, RELEASE_HALO).num_raw] == [125]
    assert r1["raw"] == [encode_window(1, 2, num, RELEASE_HALO).num_raw] == [241]
    ds = FolderVideos(tmp_path / "d", 16, 32, 24, frames=num, chunk_frames=2)
    whole = LatentCache(tmp_path / "sp1").encode(vae, ds.read(0), "s")
    for r in (r0, r1):
        assert torch.equal(r["latents"][0][0], whole) and torch.equal(r["again"][0][0], whole)
        assert r["hits"] == 1
    assert len(list((tmp_path / "sp2").rglob("*.safetensors"))) == 1


