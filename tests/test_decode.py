"""Decode modes: every mode yields the batch-decode frames; worker errors reach the caller."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import Tensor, nn

from longlive.infer.decode import DECODE_MODES, frames_to_uint8, make_decoder, to_host
from longlive.vae import build_vae

CHUNKS = [2, 1, 3]


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    vae = build_vae("tiny")
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.mul_(1.5) if not name.endswith("gamma") else p.add_(0.2 * torch.randn_like(p))
    return vae


@pytest.fixture(scope="module")
def latents() -> Tensor:
    return torch.randn(2, 16, sum(CHUNKS), 2, 2, generator=torch.Generator().manual_seed(1))


def _chunks(latents: Tensor) -> list[Tensor]:
    return list(latents.split(CHUNKS, dim=2))


@pytest.mark.parametrize("mode", ["batch", "streaming", "async", "device"])
def test_every_mode_equals_batch_decode(tiny: nn.Module, latents: Tensor, mode: str) -> None:
    ref = frames_to_uint8(tiny.decode(latents))
    assert ref.shape == (2, 1 + 4 * (latents.shape[2] - 1), 32, 32, 3)
    dec = make_decoder(mode, tiny, device="cpu" if mode == "device" else None)
    t0 = time.perf_counter()
    for chunk in _chunks(latents):
        dec.submit(chunk)
    out = dec.finish()
    assert out.dtype == torch.uint8 and out.device.type == "cpu"
    assert torch.equal(out, ref)
    assert sum(dec.chunk_frames) == ref.shape[1]
    assert t0 <= dec.first_frame_time <= dec.last_frame_time <= time.perf_counter()
    assert dec.chunk_times == sorted(dec.chunk_times) and len(dec.submit_times) == len(CHUNKS)
    with pytest.raises(RuntimeError, match="after finish"):
        dec.submit(latents[:, :, :1])


def test_unknown_mode_lists_modes(tiny: nn.Module) -> None:
    with pytest.raises(ValueError) as err:
        make_decoder("nope", tiny)
    for mode in ("batch", "streaming", "async", "device"):
        assert mode in str(err.value) and mode in DECODE_MODES


def test_frames_to_uint8_mapping() -> None:
    video = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 4, 1, 1).expand(1, 3, 4, 1, 2)
    out = frames_to_uint8(video, slab=3)
    assert out.shape == (1, 4, 1, 2, 3)
    assert out[0, :, 0, 0, 0].tolist() == [0, 128, 255, 191]


class _FakeStream:
    """Decodes to constant frames; can sleep, fail on a given call, and records concurrency."""

    def __init__(self, owner: _FakeVAE) -> None:
        self.owner, self.first = owner, True

    def decode(self, latents: Tensor) -> Tensor:
        o = self.owner
        with o.lock:
            o.calls += 1
            o.active += 1
            o.max_active = max(o.max_active, o.active)
            call = o.calls
        try:
            time.sleep(o.delay)
            if call == o.fail_on:
                raise KeyError("boom in the decode worker")
            n = 4 * latents.shape[2] - (3 if self.first else 0)
            self.first = False
            o.finished.append(time.perf_counter())
            return torch.zeros(latents.shape[0], 3, n, 4, 4)
        finally:
            with o.lock:
                o.active -= 1


class _FakeVAE(nn.Module):
    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.delay, self.fail_on = delay, fail_on
        self.lock = threading.Lock()
        self.calls = self.active = self.max_active = 0
        self.finished: list[float] = []

    def streaming_decoder(self) -> _FakeStream:
        return _FakeStream(self)


@pytest.mark.parametrize("mode", ["async", "device"])
def test_worker_error_reaches_caller(mode: str) -> None:
    dec = make_decoder(mode, _FakeVAE(fail_on=2))
    chunk = torch.zeros(1, 4, 1, 1, 1)
    dec.submit(chunk)
    dec.submit(chunk)  # fails in the worker
    with pytest.raises(KeyError, match="boom"):
        dec.submit(chunk)  # waits for the failed decode and re-raises it
    with pytest.raises(RuntimeError, match="earlier chunk"):
        dec.submit(chunk)
    dec.close()


def test_worker_error_raised_by_finish() -> None:
    dec = make_decoder("async", _FakeVAE(fail_on=1))
    dec.submit(torch.zeros(1, 4, 1, 1, 1))
    with pytest.raises(KeyError, match="boom"):
        dec.finish()


def test_async_overlaps_caller_with_one_decode_in_flight() -> None:
    vae = _FakeVAE(delay=0.05)
    dec = make_decoder("async", vae)
    returned = []
    for _ in range(4):
        dec.submit(torch.zeros(1, 4, 2, 1, 1))
        returned.append(time.perf_counter())
    out = dec.finish()
    assert out.shape == (1, 5 + 3 * 8, 4, 4, 3)
    assert vae.max_active == 1
    assert returned[-1] < vae.finished[-1]  # the last submit returned before its decode finished
    assert dec.last_frame_time >= vae.finished[-1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["batch", "streaming", "async", "device"])
def test_cuda_modes_equal_batch(tiny: nn.Module, mode: str) -> None:
    vae = build_vae("tiny", device="cuda")
    vae.load_state_dict(tiny.state_dict())
    latents = torch.randn(1, 16, 6, 4, 4, device="cuda")
    ref = frames_to_uint8(vae.decode(latents)).cpu()
    target = f"cuda:{torch.cuda.device_count() - 1}" if mode == "device" else None
    dec = make_decoder(mode, vae, device=target)
    base = torch.randn(1, 16, 3, 4, 4, device="cuda")
    for chunk in latents.split([3, 1, 2], dim=2):
        buf = base[:, :, : chunk.shape[2]]
        buf.copy_(chunk * 2).sub_(chunk)  # produced on the caller's stream right before submit
        dec.submit(buf)
        buf.fill_(float("nan"))  # the caller reuses its buffer at once
    out = dec.finish()
    assert out.device.type == "cpu" and torch.equal(out, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_host_uses_pinned_memory() -> None:
    frames = torch.randint(0, 255, (1, 4, 8, 8, 3), dtype=torch.uint8, device="cuda")
    host = to_host(frames)
    assert host.is_pinned() and torch.equal(host, frames.cpu())


def test_decode_ignores_process_global_sdpa_restrictions():
    """The DiT narrows SDPA kernels with a process-global context while an async decode thread runs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from longlive.vae import build_vae

    torch.manual_seed(0)
    vae = build_vae("tiny")
    z = torch.randn(1, vae.z_dim, 2, 2, 2)
    ref = vae.decode(z)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # no CPU kernel of this kind exists
        dec = make_decoder("async", vae)
        dec.submit(z)
        out = dec.finish()
    assert torch.equal(out, frames_to_uint8(ref).cpu())
