"""Process groups for sp × dp from torchrun's environment (NCCL on GPU, gloo on CPU).

Ranks are laid out as dp replicas of consecutive sp groups: global rank = dp_rank · sp + sp_rank.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longlive.model.presets import ModelConfig


@dataclass
class ParallelDims:
    sp: int
    dp: int
    rank: int
    world: int
    local_rank: int
    device: torch.device
    sp_group: object | None = None

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_sp(cfg: ModelConfig, sp: int) -> None:
    """Clear errors, before any work, when sp cannot split this model's heads or a chunk's frames."""
    if sp < 1:
        raise ValueError(f"sp must be ≥ 1, got {sp}")
    if cfg.num_heads % sp:
        raise ValueError(f"sp={sp} does not divide the {cfg.name} preset's {cfg.num_heads} attention heads")
    if cfg.chunk_frames % sp:
        raise ValueError(f"sp={sp} does not divide the {cfg.name} preset's {cfg.chunk_frames} latent frames per chunk")


def init_parallel(sp: int, *, device: str | None = None, backend: str | None = None) -> ParallelDims:
    """Join (or create) the default process group from RANK / WORLD_SIZE / LOCAL_RANK and build the sp groups."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world % sp:
        raise ValueError(f"world size {world} is not sp × dp for sp={sp} (launch sp × dp processes, e.g. torchrun "
                         f"--nproc_per_node={sp})")
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return ParallelDims(sp=1, dp=1, rank=0, world=1, local_rank=0, device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    groups = [dist.new_group(list(range(d * sp, (d + 1) * sp))) for d in range(world // sp)]
    return ParallelDims(sp=sp, dp=world // sp, rank=rank, world=world, local_rank=local, device=dev,
                        sp_group=groups[rank // sp])


def shutdown_parallel() -> None:
    """Leave the default process group cleanly: a barrier so no rank tears down while a peer still has a collective
    in flight, a collection so no object still holds gloo work at interpreter exit, then destroy. Without this a gloo
    rank can abort at exit ("terminate called without an active exception"), which CI saw once."""
    if not dist.is_initialized():
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
