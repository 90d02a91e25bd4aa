"""The Stage-1 trainer on 2 gloo ranks: FSDP2 (fully_shard) equals hand-averaged gradients, and FSDP checkpoints
hold the full state; the Table 1 bench runs its configs end to end (plumbing only on CPU)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.parallel.groups import shutdown_parallel

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    from longlive.train.trainer import ARTrainer, RandomLatentData, TrainConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        mc = get_preset("tiny")
        out = {}
        for fsdp in (False, True):
            model = build_model(mc, seed=0)
            cfg = TrainConfig(train_steps=3, lr=1e-3, fsdp=fsdp, activation_checkpointing=fsdp, resume=False,
                              progress=False, ckpt_every=3, ema_start=1)
            tr = ARTrainer(model, cfg, RandomLatentData(mc, 4, seed=0, rank=rank), Path(tmp) / f"fsdp{int(fsdp)}")
            steps = [tr.train_step() for _ in range(3)]
            out[fsdp] = {"fsdp": tr.fsdp, "losses": [m["loss"] for m in steps],
                         "grad_norms": [m["grad_norm"] for m in steps],  # after the average: sum ≠ mean shows here
                         "params": {k: v.float() for k, v in tr._model_state().items()}}
            tr.save()
            del tr, model  # drop FSDP state (and any gloo work it holds) before the group goes
        if rank == 0:
            torch.save(out, Path(tmp) / "out.pt")
    finally:
        shutdown_parallel()


def test_fsdp_trainer_equals_hand_averaged_gradients(tmp_path):
    from longlive.train.checkpoint import load_latest

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    out = torch.load(tmp_path / "out.pt")
    assert out[False]["fsdp"] is False and out[True]["fsdp"] is True
    torch.testing.assert_close(torch.tensor(out[True]["losses"]), torch.tensor(out[False]["losses"]),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(out[True]["grad_norms"]), torch.tensor(out[False]["grad_norms"]),
                               rtol=1e-4, atol=1e-5)
    ref = out[False]["params"]
    assert set(out[True]["params"]) == set(ref)
    for k, v in out[True]["params"].items():  # full (gathered) parameters after 3 AdamW steps
        torch.testing.assert_close(v, ref[k], rtol=1e-3, atol=1e-4, msg=k)
    state = load_latest(tmp_path / "fsdp1")
    assert state["step"] == 3
    assert state["model"]["blocks.0.ffn.0.weight"].shape == ref["blocks.0.ffn.0.weight"].shape


def test_manifest_commit_prefers_the_stated_commit(monkeypatch):
    """A copied tree (the GPU machine's) may carry a stale .git: the commit the caller states wins."""
    from longlive.measure.manifest import git_commit

    monkeypatch.setenv("LONGLIVE_GIT_COMMIT", "abc1234+wip")
    assert git_commit() == "abc1234+wip"
    monkeypatch.delenv("LONGLIVE_GIT_COMMIT")
    assert git_commit() != "abc1234+wip"
