"""Decode modes: when and where latent chunks become uint8 frames in host memory (spec 02, "Decoding modes").

All modes share one interface, so the generator and the benchmarks can swap them by name::

    dec = make_decoder("async", vae)
    for chunk in generator:          # chunk: [B, z, t, h, w] normalised latents
        dec.submit(chunk)
    video = dec.finish()             # torch.uint8 [B, T, H, W, 3] on CPU, all frames in order
    dec.last_frame_time              # time.perf_counter() when the last frame reached host memory
    dec.land_times                   # per submitted chunk: when its frames reached host memory

- ``batch``: keep the latents, decode everything in ``finish()``.
- ``streaming``: decode each chunk in ``submit()``, carrying the VAE's causal caches.
- ``async``: like streaming, but the decode runs in a worker thread (on its own CUDA stream on GPU) and
  overlaps the caller's next chunk; at most ``max_in_flight`` (default 1) decodes are outstanding.
- ``device``: the VAE lives on ``device`` (e.g. a second GPU); latents are copied there and a worker
  thread decodes and copies the frames into pinned host memory.
- ``tiles``: under sequence parallelism, every SP rank decodes one spatial tile of each chunk in ``submit()``
  (``longlive.parallel.vae_decode.ParallelDecoder``) and the group's first rank gathers the frames; the release
  decodes the whole video on every rank and rank 0 saves it; ``streaming`` under SP decodes on rank 0 alone.

Every mode yields exactly the frames of ``vae.decode`` on all latents (the streaming decoder is
bit-identical to a batch decode). Errors raised in a worker are re-raised in the caller by the next
``submit()`` or by ``finish()``.

``land_times`` is what the prompt-switch latency reads (``switch_latencies``): a chunk's frames are copied to the
host together, so its land time is when its first frame is in host memory; in ``batch`` every chunk lands at once,
after the last one was submitted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from longlive.parallel.vae_decode import ParallelDecoder, PatchParallelDecoder

DECODE_MODES: dict[str, type[Decoder]] = {}


def register_mode(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator: make a Decoder available to :func:`make_decoder` under ``name``."""

    def wrap(cls: type[Decoder]) -> type[Decoder]:
        cls.mode = name
        DECODE_MODES[name] = cls
        return cls

    return wrap


def make_decoder(mode: str, vae: nn.Module, *, device: str | torch.device | None = None, **options) -> Decoder:
    """Build the decoder for ``mode``; ``device`` is where the VAE runs (moved there if given)."""
    try:
        cls = DECODE_MODES[mode]
    except KeyError:
        raise ValueError(f"unknown decode mode {mode!r}; known modes: {', '.join(DECODE_MODES)}") from None
    return cls(vae, device=device, **options)


def frames_to_uint8(video: Tensor, slab: int = 16) -> Tensor:
    """[B, 3, T, H, W] in [-1, 1] → uint8 [B, T, H, W, 3] on the same device, rounded to nearest.

    Converted ``slab`` frames at a time so the float32 temporary stays small for long videos.
    """
    b, _, t, h, w = video.shape
    out = torch.empty((b, t, h, w, 3), dtype=torch.uint8, device=video.device)
    for s in range(0, t, slab):
        x = video[:, :, s : s + slab].permute(0, 2, 3, 4, 1).to(torch.float32, copy=True)
        out[:, s : s + slab] = x.add_(1.0).mul_(127.5).round_().clamp_(0.0, 255.0)
    return out


def to_host(frames: Tensor) -> Tensor:
    """Copy frames to host memory and wait for them: pinned, asynchronous copy when they are on CUDA
    (pageable device→host copies are ~100× slower)."""
    if frames.device.type != "cuda":
        return frames.cpu()
    host = torch.empty(frames.shape, dtype=frames.dtype, pin_memory=True)
    host.copy_(frames, non_blocking=True)
    torch.cuda.current_stream(frames.device).synchronize()
    return host


def _module_device(module: nn.Module) -> torch.device:
    if hasattr(module, "device"):  # our VAEs say where they live (the tiny codec holds buffers, no parameters)
        return torch.device(module.device)
    return next(module.parameters()).device


def switch_latencies(submitted: dict[int, float], land_times: list[float]) -> list[float]:
    """Seconds from each prompt switch's submission (chunk → perf_counter, `GenerationResult.switch_submitted`) to
    that chunk's frames in host memory (`Decoder.land_times`), in chunk order."""
    if missing := sorted(c for c in submitted if not 0 <= c < len(land_times)):
        raise ValueError(f"switch chunks {missing} never landed: the decoder holds {len(land_times)} chunks (was it "
                         f"finished before reading the switch latency?)")
    return [land_times[c] - t for c, t in sorted(submitted.items())]


class Decoder:
    """Base class: collects host frames per chunk with the time each chunk landed."""

    mode: ClassVar[str] = ""

    def __init__(self, vae: nn.Module, *, device: str | torch.device | None = None) -> None:
        if device is not None:
            vae.to(torch.device(device))
        self.vae = vae
        self.device = _module_device(vae)
        self.submit_times: list[float] = []  # perf_counter at each submit()
        self.chunk_times: list[float] = []  # perf_counter when each decoded chunk was in host memory
        self.chunk_frames: list[int] = []  # frames per landed chunk
        self.land_times: list[float] = []  # per submitted chunk, in order: perf_counter when its frames were on host
        self._host: list[Tensor] = []
        self._finished = False

    @property
    def first_frame_time(self) -> float | None:
        return self.chunk_times[0] if self.chunk_times else None

    @property
    def last_frame_time(self) -> float | None:
        return self.chunk_times[-1] if self.chunk_times else None

    def submit(self, latents: Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> Tensor:
        raise NotImplementedError

    def warm_up(self, chunk_shape: tuple[int, ...]) -> float | None:
        """Decode a throwaway two-chunk stream of zero latents ([B, z, t, h, w] per chunk) on the VAE's device, so
        cuDNN's algorithm search and any compilation for the first- and steady-chunk shapes happen before the
        timed run (measured on an H200: the first timed chunk took 4.8 s eager, 9.7 s compiled, against 1.07 s
        steady). Returns the seconds it took; None on CPU, which has nothing to warm."""
        if self.device.type != "cuda":
            return None
        t0 = time.perf_counter()
        z = torch.zeros(chunk_shape, device=self.device, dtype=self.vae.dtype)
        stream = self._warm_stream()
        with torch.no_grad():
            stream.decode(z)
            stream.decode(z)
        stream.reset()  # the video starts from a fresh cache
        torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0

    def _warm_stream(self):
        """The stream the warm-up decodes through: a throwaway one (the tiles mode warms its own, every rank)."""
        return self.vae.streaming_decoder()

    def close(self) -> None:
        """Release worker resources (idempotent)."""

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError(f"{self.mode} decoder: submit() after finish()")

    def _land(self, frames: Tensor, chunks: int = 1) -> None:
        """Frames in host memory: the decode of the next ``chunks`` submitted chunks."""
        now = time.perf_counter()
        self._host.append(frames)
        self.chunk_frames.append(frames.shape[1])
        self.chunk_times.append(now)
        self.land_times += [now] * chunks

    def _collect(self) -> Tensor:
        self._finished = True
        if not self._host:
            raise RuntimeError(f"{self.mode} decoder: finish() before any submit()")
        if len(self._host) > 1:
            self._host = [torch.cat(self._host, dim=1)]
        return self._host[0]


@register_mode("batch")
class BatchDecoder(Decoder):
    """Keep every chunk's latents; decode the whole latent video in ``finish()``."""

    def __init__(self, vae: nn.Module, *, device: str | torch.device | None = None) -> None:
        super().__init__(vae, device=device)
        self._latents: list[Tensor] = []

    def submit(self, latents: Tensor) -> None:
        self._check_open()
        self.submit_times.append(time.perf_counter())
        self._latents.append(latents.to(self.device, copy=True))  # own it: decoding is deferred

    def finish(self) -> Tensor:
        if self._latents:
            video = self.vae.decode(torch.cat(self._latents, dim=2))
            self._land(to_host(frames_to_uint8(video)), chunks=len(self._latents))
            self._latents.clear()
        return self._collect()


@register_mode("streaming")
class StreamingModeDecoder(Decoder):
    """Decode each chunk synchronously in ``submit()`` with the causal caches carried over."""

    def __init__(self, vae: nn.Module, *, device: str | torch.device | None = None) -> None:
        super().__init__(vae, device=device)
        self._stream = vae.streaming_decoder()

    def submit(self, latents: Tensor) -> None:
        self._check_open()
        self.submit_times.append(time.perf_counter())
        self._land(to_host(frames_to_uint8(self._stream.decode(latents.to(self.device)))))

    def finish(self) -> Tensor:
        return self._collect()


@register_mode("async")
class AsyncDecoder(Decoder):
    """Streaming decode in one worker thread (own CUDA stream on GPU), overlapping the caller.

    ``submit()`` first waits until fewer than ``max_in_flight`` decodes are outstanding (re-raising
    any worker error), then stages a private copy of the chunk on the VAE device and queues it.
    """

    def __init__(self, vae: nn.Module, *, device: str | torch.device | None = None, max_in_flight: int = 1) -> None:
        super().__init__(vae, device=device)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.max_in_flight = max_in_flight
        self._stream = vae.streaming_decoder()
        if self.device.type == "cuda" and hasattr(self._stream, "sync_each_step"):
            self._stream.sync_each_step = True  # never hold the GIL in a blocked launch (wan_vae.StreamingDecoder)
        self._cuda_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"longlive-{self.mode}-decode")
        self._pending: deque[Future[None]] = deque()
        self._error: BaseException | None = None

    def submit(self, latents: Tensor) -> None:
        self._check_open()
        while len(self._pending) >= self.max_in_flight:
            self._pending.popleft().result()  # re-raises a worker error in the caller
        if self._error is not None:
            raise RuntimeError(f"{self.mode} decoder failed on an earlier chunk") from self._error
        self.submit_times.append(time.perf_counter())
        # A private copy on the VAE device: the caller may reuse its buffer while we decode.
        staged = latents.to(self.device, copy=True, non_blocking=self.device.type == "cuda")
        ready = None
        if self._cuda_stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        self._pending.append(self._pool.submit(self._work, staged, ready))

    def warm_up(self, chunk_shape: tuple[int, ...]) -> float | None:
        """The base warm-up, run in the worker thread on its stream: cuDNN keeps its handles and tuned plans per
        thread, so a warm-up in the caller's thread left the worker's first chunk 3.6 s slow (reports/perf, E2E)."""
        if self.device.type != "cuda":
            return None

        def work() -> float | None:
            with torch.cuda.device(self.device), torch.cuda.stream(self._cuda_stream):
                return Decoder.warm_up(self, chunk_shape)

        return self._pool.submit(work).result()

    def _work(self, latents: Tensor, ready: torch.cuda.Event | None) -> None:
        if self._error is not None:
            raise RuntimeError(f"{self.mode} decoder: skipped after an earlier failure") from self._error
        try:
            with torch.no_grad():
                if self._cuda_stream is None:
                    frames = to_host(frames_to_uint8(self._stream.decode(latents)))
                else:
                    with torch.cuda.device(self.device), torch.cuda.stream(self._cuda_stream):
                        self._cuda_stream.wait_event(ready)
                        latents.record_stream(self._cuda_stream)
                        frames = to_host(frames_to_uint8(self._stream.decode(latents)))
        except BaseException as err:
            self._error = err
            raise
        self._land(frames)

    def finish(self) -> Tensor:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self.close()
        return self._collect()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


@register_mode("device")
class DeviceDecoder(AsyncDecoder):
    """The VAE on another device (``device=``, default: wherever the VAE already is).

    Latents are copied to that device, a worker thread decodes them on its own stream and copies the
    uint8 frames into pinned host memory, so the generator's GPU only pays for the latent copy.
    """


@register_mode("tiles")
class TilesDecoder(Decoder):
    """Tile-parallel streaming decode over an SP group: every rank of ``group`` builds one and submits every chunk
    (the decode is a collective, so it runs synchronously in the caller's thread, between chunks, never beside the
    generator's all-to-alls); frames land on the group's first rank only, the others' ``finish()`` returns None.
    Equal to ``streaming`` within float rounding (tests/test_parallel_vae.py, tests/test_sp_infer.py)."""

    def __init__(self, vae: nn.Module, *, device: str | torch.device | None = None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(vae, device=device)
        # a patch-local codec (the tiny preset's) splits by latent rows; the Wan VAE by halo tiles of its decoder
        tiled = PatchParallelDecoder if getattr(vae, "patch_local", False) else ParallelDecoder
        self._tiles = tiled(vae, group=group)
        self.is_root = self._tiles.rank == 0

    def submit(self, latents: Tensor) -> None:
        self._check_open()
        self.submit_times.append(time.perf_counter())
        frames = self._tiles.decode(latents.to(self.device))
        if frames is not None:
            self._land(to_host(frames_to_uint8(frames)))

    def _warm_stream(self):
        return self._tiles  # a collective: every rank warms up through it, and it is reset after

    def finish(self) -> Tensor | None:  # type: ignore[override]
        if not self.is_root:
            self._finished = True
            return None
        return self._collect()
