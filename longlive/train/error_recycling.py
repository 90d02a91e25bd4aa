"""Error recycling for the Stage-1 teacher-forcing trainer (spec 04, "Error recycling").

At inference an AR model conditions on its own, imperfect outputs and denoises latents that already carry the
drift of earlier steps; teacher forcing only ever shows it clean data. Error recycling closes that gap: the model's
own errors, recorded during training, are injected back into its inputs, so it learns to cope with the errors it
will meet at inference.

What is recorded (after every forward, detached, per block of `chunk_frames` latents, B = 1):
- the x̂0 error  e_x0 = x̂0 − x0 with x̂0 = x_in − σ·v̂ (x_in: the noisy input the model actually saw, perhaps
  perturbed; x0: the true clean latents), into the x0 bank at the bucket of the block's timestep;
- the velocity error  e_v = v̂ − (ε − x0) (true, un-perturbed ε and x0), into the velocity bank, likewise.
  (On an un-perturbed input e_x0 = −σ·e_v, so the two carry the same information at different scales; the
  velocity bank feeds the noise injection, where an O(1) error of noise scale is what is wanted.)
Errors are stored as [C, chunk, H, W] tensors on the CPU in `store_dtype` (bf16 by default). A bank whose
injection probabilities are all zero records nothing.

Memory: one entry costs C·chunk·H·W·2 bytes in bf16 (tiny preset: 16·2·8·8·2 = 4 KiB; release 704×1280, 8-latent
blocks: 48·8·44·80·2 ≈ 2.7 MB). A bank holds at most num_buckets × capacity entries (50 × 500 = 25,000 → ≈ 68 GB
at release shapes). What a run actually stores is bounded by its records: steps × blocks per step per bank and
rank (600 steps × 12 blocks of F = 96 = 7,200 entries ≈ 19.5 GB per bank, ×2 banks, in host RAM). The banks are
part of the trainer checkpoint (one copy per SP group, gathered to rank 0), so checkpoints grow by the same amount;
lower `capacity`, set p_noise = 0 (no velocity bank) or store fewer frames where host memory is tight.

Sequence parallelism (`longlive.train.balanced`): every rank of an SP group keeps the SAME banks, holding the
errors of all F frames of the group's sample (the all-gathered errors of every rank's frames, recorded in frame
order), and draws the injection from the same generator (seeded by the group's first rank), so the group injects
exactly what one process training the whole sample would; each rank materialises only its own frames'
deltas (`plan(frames=...)`). Per-rank host memory is therefore that of sp = 1, not 1/sp of it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from longlive.names import ER_REPLACEMENTS, ER_STORE_DTYPES, ER_TARGETS, check_choice
from longlive.train.teacher_forcing import NUM_TRAIN_TIMESTEPS

STORE_DTYPES = dict(zip(ER_STORE_DTYPES, (torch.bfloat16, torch.float16, torch.float32), strict=True))
TARGETS = ER_TARGETS

RELEASE_KEYS = {
    "num_buckets": "num_buckets", "capacity": "buffer_size_per_bucket", "p_clean": "clean_prob",
    "p_context": "context_inject_prob", "p_latent": "latent_inject_prob", "p_noise": "noise_inject_prob",
    "p_clean_record": "clean_buffer_update_prob", "scale_min": "modulate_factor (1 − m)",
    "scale_max": "modulate_factor (1 + m)", "start_step": "start_step", "replacement": "replacement_strategy",
}
"""The release's `error_recycling:` key (configs/train_ar.yaml) behind each field; store_dtype and target are ours."""


@dataclass
class ErrorRecyclingConfig:
    """Knobs of error recycling; defaults are the release values (spec 04, the release's train_ar.yaml).

    How each probability is applied in this implementation (one sample per step, B = 1):

    - ``p_clean`` — once per training step: with probability p_clean the whole step runs on clean inputs (no
      injection of any kind).
    - ``p_clean_record`` — on a clean step, the probability that its (small) errors are recorded at all (the
      release's clean_buffer_update_prob: clean-input errors would otherwise flood the banks); non-clean steps
      always record.
    - ``p_context`` — per block, on non-clean steps: with this probability the clean context copy of block i
      gets ``scale · e`` added, e drawn from the x0 bank at a bucket drawn uniformly over all buckets (the
      context's error severity is independent of the noisy block's timestep). Context block i is what noisy
      blocks i+1… condition on, exactly the place where generated, error-carrying frames sit at inference.
    - ``p_latent`` — per block, on non-clean steps: with this probability the noisy input of block i gets
      ``scale · e`` added, e drawn from the x0 bank at the block's own timestep bucket (x̂0 errors at bucket t
      scale like σ(t), so the perturbation is matched to the noise level).
    - ``p_noise`` — per block, on non-clean steps: with this probability the noise of block i becomes
      ε + scale · e, e drawn from the velocity bank at the block's own bucket; the noisy input therefore moves by
      σ · scale · e.
    - ``scale_min``/``scale_max`` — each injection (block × kind) draws its own scale ~ U(scale_min, scale_max)
      (the release's modulate_factor m = 0.3 is U(1 − m, 1 + m)).
    - ``start_step`` — optimiser steps before it record errors but inject nothing.
    - ``replacement`` — which entry a full bucket overwrites: ``"random"`` (the release) or ``"oldest"`` (a ring).

    All three gates and scales are drawn for every block every non-clean step (so the number of draws does not
    depend on which gates fire); an injection whose bucket is still empty (early in training) is skipped.

    ``target`` — what the loss regresses, with x_in = x_t + δ the perturbed noisy input (δ = latent + σ·noise
    perturbation; the context perturbation does not enter the noisy tokens' target):

    - ``"clean"`` (default): the true v = ε − x0 of the UN-perturbed sample, whatever was injected. The model is
      asked for the velocity it would give on the clean trajectory while seeing a drifted input and drifted
      context, i.e. to be insensitive to the error: a sampler step from x_in moves by the clean displacement, so
      an input drift is carried along without being amplified, and corrupted context cannot pull the block off
      the data.
    - ``"corrective"``: v* = (x_in − x0)/σ = (ε − x0) + δ/σ, the straight path from the perturbed input to the
      TRUE data, so x̂0 = x_in − σ·v* = x0 exactly: the model learns to remove the drift. For noise injection this
      is simply ε̃ − x0; for latent injection the extra term is scale·e/σ, which stays O(1) because e comes from
      the block's own bucket where x̂0 errors scale like σ.
    """

    num_buckets: int = 50
    capacity: int = 500
    p_clean: float = 0.2
    p_context: float = 0.9
    p_latent: float = 0.9
    p_noise: float = 0.01
    p_clean_record: float = 0.1
    scale_min: float = 0.7
    scale_max: float = 1.3
    start_step: int = 0
    replacement: str = "random"
    store_dtype: str = "bfloat16"
    target: str = "clean"

    def __post_init__(self) -> None:
        for name in ("p_clean", "p_context", "p_latent", "p_noise", "p_clean_record"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"error_recycling_config.{name}={p} must lie in [0, 1]")
        for name in ("num_buckets", "capacity"):
            if getattr(self, name) < 1:
                raise ValueError(f"error_recycling_config.{name}={getattr(self, name)} must be ≥ 1")
        if self.start_step < 0:
            raise ValueError(f"error_recycling_config.start_step={self.start_step} must be ≥ 0")
        if self.scale_min > self.scale_max:
            raise ValueError(f"error_recycling_config.scale_min={self.scale_min} > scale_max={self.scale_max}; "
                             "give scale_min ≤ scale_max")
        check_choice("error_recycling_config.store_dtype", self.store_dtype, ER_STORE_DTYPES)
        check_choice("error_recycling_config.target", self.target, ER_TARGETS)
        check_choice("error_recycling_config.replacement", self.replacement, ER_REPLACEMENTS)


def _mix(*parts: int) -> int:
    """A 64-bit hash of small integers (splitmix64's finaliser per part): the deterministic 'random' slot of a full
    bucket."""
    m = 0xFFFFFFFFFFFFFFFF
    h = 0
    for p in parts:
        h = (h + 0x9E3779B97F4A7C15 + (int(p) & m)) & m
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & m
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & m
        h ^= h >> 31
    return h


class ErrorBank:
    """Per-timestep-bucket buffers of error tensors (CPU, `dtype`).

    Bucket b covers t ∈ [b·w, (b+1)·w) with w = t_max / num_buckets; t < 0 goes to bucket 0 and t ≥ t_max (t = 1000
    included) to the last bucket. Each bucket keeps at most `capacity` entries; once full, a record overwrites the
    oldest entry (replacement "oldest") or a pseudo-random one (replacement "random", the release's strategy). The
    random slot is a hash of (bucket, records so far), not an RNG draw, so it needs no generator, is identical on
    every rank that records the same sequence, and resumes exactly from the checkpointed counts.
    """

    def __init__(self, num_buckets: int = 50, capacity: int = 500, *, dtype: torch.dtype = torch.bfloat16,
                 t_max: float = float(NUM_TRAIN_TIMESTEPS), replacement: str = "random"):
        if num_buckets < 1 or capacity < 1:
            raise ValueError("ErrorBank needs num_buckets ≥ 1 and capacity ≥ 1")
        check_choice("replacement", replacement, ER_REPLACEMENTS)
        self.num_buckets, self.capacity, self.dtype, self.t_max = num_buckets, capacity, dtype, float(t_max)
        self.replacement = replacement
        self.items: list[list[torch.Tensor]] = [[] for _ in range(num_buckets)]
        self.next: list[int] = [0] * num_buckets  # slot the next record of each bucket goes to ("oldest")
        self.added: list[int] = [0] * num_buckets  # records ever made into each bucket

    def bucket(self, t: float) -> int:
        b = int(float(t) * self.num_buckets // self.t_max)
        return min(max(b, 0), self.num_buckets - 1)

    def __len__(self) -> int:
        return sum(len(it) for it in self.items)

    def count(self, t: float) -> int:
        return len(self.items[self.bucket(t)])

    def record(self, t: float, err: torch.Tensor) -> None:
        """Store a detached CPU copy of `err` in t's bucket; a full bucket overwrites by `replacement`."""
        b = self.bucket(t)
        e = err.detach().to(device="cpu", dtype=self.dtype, copy=True)
        if len(self.items[b]) < self.capacity:
            self.items[b].append(e)
            slot = len(self.items[b]) - 1
        else:
            slot = self.next[b] if self.replacement == "oldest" else _mix(b, self.added[b]) % self.capacity
            self.items[b][slot] = e
        self.next[b] = (slot + 1) % self.capacity
        self.added[b] += 1

    def sample_bucket(self, b: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A uniformly drawn entry of bucket b (one randint from `generator`), or None when it is empty."""
        entries = self.items[b]
        if not entries:
            return None
        return entries[int(torch.randint(len(entries), (1,), generator=generator))]

    def sample(self, t: float, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """A uniformly drawn entry of t's bucket (deterministic given the generator), or None when it is empty."""
        return self.sample_bucket(self.bucket(t), generator)

    def state_dict(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets, "capacity": self.capacity, "t_max": self.t_max,
                "replacement": self.replacement, "items": [list(it) for it in self.items], "next": list(self.next),
                "added": list(self.added)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (int(state["num_buckets"]), int(state["capacity"])) != (self.num_buckets, self.capacity):
            raise ValueError(f"error bank state has {state['num_buckets']} buckets × {state['capacity']}, this bank "
                             f"{self.num_buckets} × {self.capacity}")
        self.t_max = float(state.get("t_max", self.t_max))
        self.items = [[e.to(device="cpu", dtype=self.dtype) for e in it] for it in state["items"]]
        self.next = [int(n) for n in state["next"]]
        # banks saved before `added` existed: as many records as entries (exact until a bucket first filled)
        self.added = [int(n) for n in state.get("added", [len(it) for it in self.items])]


@dataclass
class Injection:
    """What one step injects, as deltas [1, C, F', H, W] (float32, on the latents' device) over the planned frames
    (all F, or the [lo, hi) a sequence-parallel rank holds).

    context: added to the clean copy; noise: added to ε; latent: added to the noisy input, with the noise
    injection's effect σ·noise already included, so the noisy half the model sees is exactly x_t + latent.
    """

    context: torch.Tensor
    latent: torch.Tensor
    noise: torch.Tensor
    applied: int  # how many (block, kind) injections fired over ALL blocks (the same on every rank of a group)


class ErrorRecycler:
    """Two banks (x̂0 errors, velocity errors) plus the injection policy of an `ErrorRecyclingConfig`.

    Step-dependent knobs: the trainer calls `set_step(step)` before each step's loss (start_step). Each `plan` decides
    whether the errors of its forward are kept (p_clean_record on clean steps) and queues that decision; the
    matching `record` / `record_errors` takes it, in plan order (a batch plans every sample, then records each).
    """

    def __init__(self, cfg: ErrorRecyclingConfig | None = None):
        self.cfg = cfg or ErrorRecyclingConfig()
        dt = STORE_DTYPES[self.cfg.store_dtype]
        self.x0_bank = ErrorBank(self.cfg.num_buckets, self.cfg.capacity, dtype=dt, replacement=self.cfg.replacement)
        self.v_bank = ErrorBank(self.cfg.num_buckets, self.cfg.capacity, dtype=dt, replacement=self.cfg.replacement)
        self.step = 0
        self._keep: deque[bool] = deque()

    @property
    def records_x0(self) -> bool:
        return self.cfg.p_context > 0 or self.cfg.p_latent > 0

    @property
    def records_v(self) -> bool:
        return self.cfg.p_noise > 0

    def set_step(self, step: int) -> None:
        """The optimiser step the next plans belong to; drops record decisions a failed step left queued."""
        self.step = int(step)
        self._keep.clear()

    def next_record_kept(self) -> bool:
        """Whether the next `record_errors` keeps its errors (lets SP ranks skip a gather all of them would drop)."""
        return self._keep[0] if self._keep else True

    def plan(self, block_t: torch.Tensor, block_sigma: torch.Tensor, shape: torch.Size | tuple[int, ...],
             chunk: int, generator: torch.Generator, device: torch.device | str = "cpu",
             frames: tuple[int, int] | None = None) -> Injection | None:
        """Draw this step's injection (see `ErrorRecyclingConfig` for the rules); None on a clean step.

        block_t / block_sigma [N]: every block's timestep and σ; shape: the latents' [1, C, F, H, W] (all F frames).
        frames: materialise only latent frames [lo, hi) (whole blocks), as a Balanced-SP rank does; every draw is
        still made for every block, so all ranks of a group consume the generator alike.
        """
        c = self.cfg
        if self.step < c.start_step:
            self._keep.append(True)  # before start_step: record, never inject
            return None
        if float(torch.rand((), generator=generator)) < c.p_clean:
            # p_clean_record 1 draws nothing: the generator's stream is then exactly that of the recipe before the
            # knob existed (the tiny default pins it so, with replacement "oldest", to stay reproducible)
            keep = c.p_clean_record >= 1.0 or float(torch.rand((), generator=generator)) < c.p_clean_record
            self._keep.append(keep)
            return None
        self._keep.append(True)
        n = int(block_t.numel())
        lo, hi = (0, int(shape[2])) if frames is None else frames
        if lo % chunk or hi % chunk or not 0 <= lo < hi <= int(shape[2]):
            raise ValueError(f"error recycling plans whole blocks: frames=[{lo}, {hi}) of {shape[2]} frames is not "
                             f"whole blocks of chunk {chunk}")
        local = (shape[0], shape[1], hi - lo, *shape[3:])
        ctx = torch.zeros(local, dtype=torch.float32, device=device)
        lat, noi = torch.zeros_like(ctx), torch.zeros_like(ctx)
        applied = 0
        blk_shape = tuple(shape[1:2]) + (chunk,) + tuple(shape[3:])
        for i in range(n):
            gates = torch.rand(3, generator=generator)
            scales = c.scale_min + (c.scale_max - c.scale_min) * torch.rand(3, generator=generator)
            ctx_bucket = int(torch.randint(c.num_buckets, (1,), generator=generator))
            mine = lo <= i * chunk < hi
            sl = slice(i * chunk - lo, (i + 1) * chunk - lo)
            t_i, s_i = float(block_t[i]), float(block_sigma[i])
            if gates[0] < c.p_context:
                e = self._fit(self.x0_bank.sample_bucket(ctx_bucket, generator), blk_shape)
                if e is not None:
                    if mine:
                        ctx[0, :, sl] = float(scales[0]) * e.to(device, torch.float32)
                    applied += 1
            if gates[1] < c.p_latent:
                e = self._fit(self.x0_bank.sample(t_i, generator), blk_shape)
                if e is not None:
                    if mine:
                        lat[0, :, sl] = float(scales[1]) * e.to(device, torch.float32)
                    applied += 1
            if gates[2] < c.p_noise:
                e = self._fit(self.v_bank.sample(t_i, generator), blk_shape)
                if e is not None:
                    if mine:
                        noi[0, :, sl] = float(scales[2]) * e.to(device, torch.float32)
                        lat[0, :, sl] += s_i * noi[0, :, sl]
                    applied += 1
        return Injection(context=ctx, latent=lat, noise=noi, applied=applied)

    @staticmethod
    def _fit(e: torch.Tensor | None, blk_shape: tuple[int, ...]) -> torch.Tensor | None:
        """An error recorded at another latent shape (a different resolution or block size) is not injected."""
        return e if e is not None and tuple(e.shape) == blk_shape else None

    @torch.no_grad()
    def errors(self, x_in: torch.Tensor, v_hat: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
               sigma: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(x̂0 − x0 with x̂0 = x_in − σ·v̂, v̂ − (ε − x0)), float32 [1, C, F, H, W], σ per frame; None for a bank that
        records nothing."""
        s = sigma.to(device=x_in.device, dtype=torch.float32).view(1, 1, -1, 1, 1)
        v_hat, x0 = v_hat.detach().float(), x0.detach().float()
        x0_err = x_in.detach().float() - s * v_hat - x0 if self.records_x0 else None
        v_err = v_hat - (noise.detach().float() - x0) if self.records_v else None
        return x0_err, v_err

    @torch.no_grad()
    def record_errors(self, block_t: torch.Tensor, x0_err: torch.Tensor | None, v_err: torch.Tensor | None,
                      chunk: int) -> None:
        """Store each block's errors ([1, C, F, H, W], from `errors`) at its timestep's bucket, unless the matching
        plan decided this forward's errors are dropped."""
        if not (self._keep.popleft() if self._keep else True):
            return
        for i in range(int(block_t.numel())):
            sl = slice(i * chunk, (i + 1) * chunk)
            t_i = float(block_t[i])
            if x0_err is not None:
                self.x0_bank.record(t_i, x0_err[0, :, sl])
            if v_err is not None:
                self.v_bank.record(t_i, v_err[0, :, sl])

    def record(self, block_t: torch.Tensor, x_in: torch.Tensor, v_hat: torch.Tensor, x0: torch.Tensor,
               noise: torch.Tensor, sigma: torch.Tensor, chunk: int) -> None:
        """Record each block's x̂0 − x0 (x̂0 = x_in − σ·v̂) and v̂ − (ε − x0); all [1, C, F, H, W], σ per frame."""
        self.record_errors(block_t, *self.errors(x_in, v_hat, x0, noise, sigma), chunk)

    def state_dict(self) -> dict[str, Any]:
        return {"x0": self.x0_bank.state_dict(), "v": self.v_bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x0_bank.load_state_dict(state["x0"])
        self.v_bank.load_state_dict(state["v"])
