"""Error recycling (spec 04): bucket edges, ring-buffer order, seeded sampling, state round trips, the injected
inputs, the targets, exact equality with the plain loss on clean steps, bit-identical resume, and that tiny
training with recycling still learns."""

from __future__ import annotations

import argparse
import io
import json

import pytest
import torch

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.train import checkpoint as ckpt
from longlive.train.error_recycling import ErrorBank, ErrorRecycler, ErrorRecyclingConfig
from longlive.train.teacher_forcing import add_noise, frame_schedule, teacher_forcing_loss, weighted_frame_mse
from longlive.train.trainer import (
    ARTrainer,
    RandomLatentData,
    TrainConfig,
    add_train_parser,
    parse_error_recycling_config,
)

MC = get_preset("tiny")
CHUNK = MC.chunk_frames
FRAMES = 2 * CHUNK
H, W = MC.latent_hw
BLK = (MC.in_channels, CHUNK, H, W)


def sample(seed=0):
    return next(RandomLatentData(MC, FRAMES, seed=seed, fixed=True))


def read_losses(d):
    return [json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()]


class Spy:
    """Stands in for the model: records every input sequence; returns the real model's output, or zeros."""

    def __init__(self, model=None):
        self.model, self.cfg, self.seen = model, MC, []

    def __call__(self, seq, *args, **kwargs):
        self.seen.append(seq.detach().clone())
        return self.model(seq, *args, **kwargs) if self.model is not None else torch.zeros_like(seq)


# -- the bank ------------------------------------------------------------------------------------------------------


def test_bucket_edges():
    bank = ErrorBank(50, 500)
    assert [bank.bucket(t) for t in (0.0, 19.99, 20.0, 500.0, 979.99, 980.0, 999.9, 999.999, 1000.0)] == [
        0, 0, 1, 25, 48, 49, 49, 49, 49]
    assert bank.bucket(-3.0) == 0 and bank.bucket(1e6) == 49  # out of range clamps to the end buckets
    # the training table's extremes, as the time embedding sees them (BF16-rounded): t = 1000 and t ≈ 4.98
    t = frame_schedule(torch.tensor([0, 999]), 1).t
    assert t[0] == 1000.0 and bank.bucket(float(t[0])) == 49 and bank.bucket(float(t[1])) == 0


def test_ring_buffer_capacity_and_overwrite_order():
    bank = ErrorBank(4, 3, replacement="oldest")
    errs = [torch.full((2, 2), float(i)) for i in range(5)]
    for e in errs:
        bank.record(600.0, e)  # bucket 2
    bank.record(10.0, torch.ones(2, 2))
    assert len(bank) == 4 and bank.count(600.0) == 3 and bank.count(10.0) == 1 and bank.count(300.0) == 0
    # oldest overwritten first: slots hold 3, 4, 2 and the next record goes to slot 2 (holding 2, the oldest)
    assert [float(e[0, 0]) for e in bank.items[2]] == [3.0, 4.0, 2.0] and bank.next[2] == 2
    assert all(e.dtype == torch.bfloat16 and e.device.type == "cpu" for e in bank.items[2])
    errs[4].fill_(99.0)  # a copy is stored, not a view of the caller's tensor
    assert float(bank.items[2][1][0, 0]) == 4.0


def test_random_replacement_is_a_deterministic_spread():
    """The release's default: a full bucket overwrites a pseudo-random slot, a function of (bucket, records so far),
    so two banks fed alike (SP ranks, a resumed run) stay equal, and the overwrites are not the ring's order."""
    banks = [ErrorBank(2, 8), ErrorBank(2, 8)]
    assert banks[0].replacement == "random"
    for i in range(200):
        for bank in banks:
            bank.record(100.0, torch.full((1,), float(i)))
    held = [float(e[0]) for e in banks[0].items[0]]
    assert held == [float(e[0]) for e in banks[1].items[0]] and banks[0].added[0] == 200
    ring = ErrorBank(2, 8, replacement="oldest")
    for i in range(200):
        ring.record(100.0, torch.full((1,), float(i)))
    assert sorted(float(e[0]) for e in ring.items[0]) == [float(i) for i in range(192, 200)]
    # some entry older than the ring's last 8 survives (an entry lives (7/8)^k records on average)
    assert min(held) < 192 and len(set(held)) == 8
    back = ErrorBank(2, 8)
    back.load_state_dict(banks[0].state_dict())
    for bank in (back, banks[0]):
        bank.record(100.0, torch.full((1,), -1.0))
    assert [float(e[0]) for e in back.items[0]] == [float(e[0]) for e in banks[0].items[0]]
    with pytest.raises(ValueError, match="replacement='lifo' is not one of random, oldest"):
        ErrorBank(2, 8, replacement="lifo")


def test_sampling_is_deterministic_by_generator():
    bank = ErrorBank(10, 20)
    for i in range(12):
        bank.record(150.0, torch.full((3,), float(i)))

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        return [float(bank.sample(155.0, g)[0]) for _ in range(16)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len(set(draws(7))) > 4  # really spread over the bucket
    assert bank.sample(700.0, torch.Generator().manual_seed(0)) is None  # empty bucket


def test_state_dict_round_trip():
    rec = ErrorRecycler(ErrorRecyclingConfig(num_buckets=5, capacity=2, p_noise=0.5))
    g = torch.Generator().manual_seed(0)
    for i in range(7):
        t = torch.tensor([100.0 * i, 1000.0 - 100.0 * i])
        x = torch.randn(1, *BLK[:1], 2 * CHUNK, H, W, generator=g)
        rec.record(t, x, torch.randn(x.shape, generator=g), x * 0.5, torch.randn(x.shape, generator=g),
                   torch.tensor([0.3] * CHUNK + [0.9] * CHUNK), CHUNK)
    buf = io.BytesIO()
    torch.save(rec.state_dict(), buf)
    buf.seek(0)
    back = ErrorRecycler(ErrorRecyclingConfig(num_buckets=5, capacity=2, p_noise=0.5))
    back.load_state_dict(torch.load(buf, weights_only=False))
    for a, b in ((rec.x0_bank, back.x0_bank), (rec.v_bank, back.v_bank)):
        assert a.next == b.next and [len(x) for x in a.items] == [len(x) for x in b.items]
        assert all(torch.equal(x, y) for xs, ys in zip(a.items, b.items, strict=True)
                   for x, y in zip(xs, ys, strict=True))
    t, sig = torch.tensor([420.0, 880.0]), torch.tensor([0.4, 0.9])
    p1 = rec.plan(t, sig, (1, *BLK[:1], FRAMES, H, W), CHUNK, torch.Generator().manual_seed(3))
    p2 = back.plan(t, sig, (1, *BLK[:1], FRAMES, H, W), CHUNK, torch.Generator().manual_seed(3))
    assert (p1 is None) == (p2 is None)
    if p1 is not None:
        assert torch.equal(p1.context, p2.context) and torch.equal(p1.latent, p2.latent)
    with pytest.raises(ValueError, match="buckets"):
        ErrorBank(4, 2).load_state_dict(ErrorBank(5, 2).state_dict())


# -- the loss path -------------------------------------------------------------------------------------------------


def _inputs(seed=0):
    s = sample(seed)
    g = torch.Generator().manual_seed(seed + 1)
    t_index = torch.tensor([100, 700])  # two different buckets
    noise = torch.randn(s["x0"].shape, generator=g)
    return s, noise, t_index


def test_clean_steps_equal_the_plain_loss_exactly():
    model = build_model(MC, seed=0)
    s, noise, t_index = _inputs()
    args = (model, s["x0"], s["prompts_embeds"], s["frame_prompt"])
    plain = teacher_forcing_loss(*args, noise=noise, t_index=t_index, attn="dense")
    rec = ErrorRecycler(ErrorRecyclingConfig(p_clean=1.0, p_context=1.0, p_latent=1.0, p_noise=1.0, p_clean_record=1.0))
    for i in range(3):  # the banks fill up (same buckets), yet every step stays clean
        g = torch.Generator().manual_seed(i)
        loss = teacher_forcing_loss(*args, noise=noise, t_index=t_index, attn="dense", recycler=rec,
                                    recycle_generator=g)
        assert torch.equal(loss, plain)
    assert len(rec.x0_bank) == 6 and len(rec.v_bank) == 6


def test_clean_record_probability_and_start_step():
    """p_clean_record (the release's clean_buffer_update_prob) gates recording on clean steps only; before
    start_step nothing is injected but everything is recorded."""
    s, noise, t_index = _inputs()
    spy = Spy()  # v̂ = 0: the recorded errors are nonzero, and the inputs it saw show any injection

    def step(rec, seed):
        teacher_forcing_loss(spy, s["x0"], s["prompts_embeds"], s["frame_prompt"], noise=noise, t_index=t_index,
                             recycler=rec, recycle_generator=torch.Generator().manual_seed(seed))
        return spy.seen[-1]

    never = ErrorRecycler(ErrorRecyclingConfig(p_clean=1.0, p_clean_record=0.0))
    for i in range(4):
        step(never, i)
    assert len(never.x0_bank) == 0
    some = ErrorRecycler(ErrorRecyclingConfig(p_clean=1.0, p_clean_record=0.5))
    for i in range(40):
        step(some, i)
    assert 2 * 8 <= len(some.x0_bank) <= 2 * 32  # about half of 40 steps, 2 blocks each
    late = ErrorRecycler(ErrorRecyclingConfig(p_clean=0.0, p_context=1.0, p_latent=1.0, start_step=2))
    seen = []
    for i in range(3):
        late.set_step(i)
        seen.append(step(late, 0))
    plain = torch.cat([s["x0"], add_noise(s["x0"], noise, frame_schedule(t_index, CHUNK).sigma)], dim=2)
    assert torch.equal(seen[0], plain) and torch.equal(seen[1], plain)  # steps 0, 1: recorded, not injected
    assert len(late.x0_bank) == 6 and not torch.equal(seen[2], plain)


def test_injected_inputs_differ_by_exactly_the_scaled_errors():
    s, noise, t_index = _inputs()
    x0, fp, pe = s["x0"], s["frame_prompt"], s["prompts_embeds"]
    sched = frame_schedule(t_index, CHUNK)
    x_t = add_noise(x0, noise, sched.sigma)
    scale = 1.1
    base = torch.randn(BLK, generator=torch.Generator().manual_seed(5))

    # 1) latent injection only: the noisy block i gets scale × the x0-bank entry of ITS OWN bucket
    cfg = ErrorRecyclingConfig(p_clean=0.0, p_context=0.0, p_latent=1.0, p_noise=0.0, scale_min=scale,
                               scale_max=scale, store_dtype="float32")
    rec = ErrorRecycler(cfg)
    for b in range(cfg.num_buckets):
        rec.x0_bank.record(20.0 * b + 1, base * (b + 1))
    spy = Spy()
    teacher_forcing_loss(spy, x0, pe, fp, noise=noise, t_index=t_index, recycler=rec,
                         recycle_generator=torch.Generator().manual_seed(0))
    (seen,) = spy.seen
    assert torch.equal(seen[:, :, :FRAMES], x0)  # context untouched
    buckets = [rec.x0_bank.bucket(float(t)) for t in sched.t[::CHUNK]]
    assert buckets[0] != buckets[1]
    s32 = float(torch.tensor(scale))  # the scale as drawn (float32)
    want = torch.cat([s32 * (base * (b + 1)) for b in buckets], dim=1)[None]
    assert torch.equal(seen[:, :, FRAMES:], x_t + want)  # bit-exact: x_t + scale·e

    # 2) everything on: context + scale·A, noisy input + scale·A + σ_block·scale·B (noise ε → ε + scale·B)
    cfg = ErrorRecyclingConfig(p_clean=0.0, p_context=1.0, p_latent=1.0, p_noise=1.0, scale_min=scale,
                               scale_max=scale, store_dtype="float32")
    rec = ErrorRecycler(cfg)
    a, b_err = base, torch.randn(BLK, generator=torch.Generator().manual_seed(6))
    for b in range(cfg.num_buckets):
        rec.x0_bank.record(20.0 * b, a)
        rec.v_bank.record(20.0 * b, b_err)
    spy = Spy()
    teacher_forcing_loss(spy, x0, pe, fp, noise=noise, t_index=t_index, recycler=rec,
                         recycle_generator=torch.Generator().manual_seed(1))
    (seen,) = spy.seen
    assert torch.equal(seen[:, :, :FRAMES], x0 + (s32 * a).repeat(1, 2, 1, 1)[None])
    sig = sched.sigma.view(1, 1, -1, 1, 1)
    want = (s32 * a).repeat(1, 2, 1, 1)[None] + sig * (s32 * b_err).repeat(1, 2, 1, 1)[None]
    torch.testing.assert_close(seen[:, :, FRAMES:], x_t + want, rtol=1e-6, atol=1e-6)
    # the errors of this step were recorded at the blocks' buckets (two more entries per touched bucket)
    assert len(rec.x0_bank) == cfg.num_buckets + 2 and len(rec.v_bank) == cfg.num_buckets + 2


@pytest.mark.parametrize("target", ["clean", "corrective"])
def test_loss_target(target):
    """A model predicting v̂ = 0 has loss mean(w·target²): 'clean' keeps ε − x0 of the un-perturbed sample,
    'corrective' regresses (x_in − x0)/σ, whose x̂0 = x_in − σ·v* is exactly the true x0."""
    s, noise, t_index = _inputs()
    x0 = s["x0"]
    sched = frame_schedule(t_index, CHUNK)
    cfg = ErrorRecyclingConfig(p_clean=0.0, p_context=0.0, p_latent=1.0, p_noise=1.0, target=target)
    rec = ErrorRecycler(cfg)
    for b in range(cfg.num_buckets):
        rec.x0_bank.record(20.0 * b, 0.3 * torch.randn(BLK))
        rec.v_bank.record(20.0 * b, 0.3 * torch.randn(BLK))
    spy = Spy()
    loss = teacher_forcing_loss(spy, x0, s["prompts_embeds"], s["frame_prompt"], noise=noise, t_index=t_index,
                                recycler=rec, recycle_generator=torch.Generator().manual_seed(0))
    x_in = spy.seen[0][:, :, FRAMES:]
    sig = sched.sigma.view(1, 1, -1, 1, 1)
    tgt = noise - x0 if target == "clean" else (x_in - x0) / sig
    zero = torch.zeros_like(x0)
    torch.testing.assert_close(loss, weighted_frame_mse(zero, tgt, sched.weight).mean(), rtol=1e-5, atol=0)
    if target == "corrective":
        torch.testing.assert_close(x_in - sig * tgt, x0, rtol=0, atol=1e-5)
    assert not torch.allclose(x_in, add_noise(x0, noise, sched.sigma))  # something was injected


# -- the trainer ---------------------------------------------------------------------------------------------------


def make(tmp, *, steps=4, seed=0, model_seed=0, fixed=False, er=None, **kw):
    cfg = TrainConfig(train_steps=steps, seed=seed, progress=False, error_recycling=True,
                      error_recycling_config=er or ErrorRecyclingConfig(), **kw)
    return ARTrainer(build_model(MC, seed=model_seed), cfg, RandomLatentData(MC, FRAMES, seed=seed, fixed=fixed), tmp)


class Killed(Exception):
    pass


def test_resume_with_error_recycling_is_bit_identical(tmp_path, monkeypatch):
    """8 steps straight vs. killed at step 6 and resumed from the step-4 checkpoint by a fresh trainer: same losses,
    weights and banks. Small banks (3 buckets × 2) so injections fire from the first steps and slots get
    overwritten; resuming with the banks dropped gives different losses, so the banks really are restored."""
    er = dict(num_buckets=3, capacity=2, p_clean=0.2, p_noise=0.5)
    kw = dict(steps=8, lr=1e-3, ckpt_every=4, ema_start=2, seed=3)
    ref = make(tmp_path / "ref", er=ErrorRecyclingConfig(**er), **kw)
    ref.run()

    run = tmp_path / "run"
    first = make(run, er=ErrorRecyclingConfig(**er), **kw)
    step_fn = first.train_step
    monkeypatch.setattr(first, "train_step", lambda: (_ for _ in ()).throw(Killed) if first.step == 6 else step_fn())
    with pytest.raises(Killed):
        first.run()
    state = ckpt.load_latest(run)
    stored = sum(len(b) for b in state["error_recycling"][0]["x0"]["items"])
    assert state["step"] == 4 and stored >= 4  # 8 records into 3 × 2 slots

    second = make(run, model_seed=123, er=ErrorRecyclingConfig(**er), **kw)
    assert second.step == 4 and len(second.recycler.x0_bank) == stored
    second.run()
    assert read_losses(run) == read_losses(tmp_path / "ref")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, second.model.state_dict()[k]), k
    for a, b in ((ref.recycler.x0_bank, second.recycler.x0_bank), (ref.recycler.v_bank, second.recycler.v_bank)):
        assert a.next == b.next
        assert all(torch.equal(x, y) for xs, ys in zip(a.items, b.items, strict=True)
                   for x, y in zip(xs, ys, strict=True))

    # the same resume without the banks diverges
    (tmp_path / "nobanks").mkdir()
    state.pop("error_recycling")
    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path / "nobanks", 4), state)
    third = make(tmp_path / "nobanks", er=ErrorRecyclingConfig(**er), **kw)
    assert third.step == 4 and len(third.recycler.x0_bank) == 0
    assert third.train_step()["loss"] != read_losses(run)[4]


def test_training_with_error_recycling_still_lowers_the_loss(tmp_path):
    """20 steps on one fixed sample at lr 1e-3 with the release knobs: the plain probe loss (8 fixed (ε, t) draws,
    no injection) must fall below 0.8× its start (≈0.59× observed for seed 0, 0.56× for seed 1; plain teacher
    forcing gives ≈0.55× at 30 steps), and the logged losses (with injections) must fall too: last 7 < first 7
    (≈0.83× / 0.60× observed). The banks fill as they go."""
    tr = make(tmp_path, steps=20, lr=1e-3, fixed=True, ckpt_every=1000)
    smp = sample()

    @torch.no_grad()
    def probe() -> float:
        return sum(tr.compute_loss(smp, 10**6 + i, recycle=False).item() for i in range(8)) / 8

    before = probe()
    assert len(tr.recycler.x0_bank) == 0  # probes do not record
    tr.run()
    after = probe()
    assert after < 0.8 * before, (before, after)
    losses = read_losses(tmp_path)
    assert sum(losses[-7:]) < sum(losses[:7]), losses
    # 2 blocks a step; clean steps (p_clean 0.2) keep their errors with probability p_clean_record 0.1
    assert 20 <= len(tr.recycler.x0_bank) < 40 and len(tr.recycler.v_bank) == len(tr.recycler.x0_bank)


def test_config_and_cli(tmp_path):
    cfg = TrainConfig(error_recycling=True)
    er = cfg.error_recycling_config
    assert (er.num_buckets, er.capacity, er.p_clean, er.p_context, er.p_latent, er.p_noise) == (
        50, 500, 0.2, 0.9, 0.9, 0.01)
    assert (er.scale_min, er.scale_max, er.p_clean_record, er.start_step, er.replacement) == (0.7, 1.3, 0.1, 0,
                                                                                              "random")
    back = TrainConfig(**{**cfg.to_dict(), "betas": (0.0, 0.999)})  # the checkpointed dict rebuilds the config
    assert back.error_recycling_config == er
    with pytest.raises(ValueError, match="p_latent"):
        ErrorRecyclingConfig(p_latent=1.5)
    with pytest.raises(ValueError, match="target"):
        ErrorRecyclingConfig(target="perturbed")

    ap = argparse.ArgumentParser()
    add_train_parser(ap.add_subparsers(dest="command"))
    assert ap.parse_args(["train", "--out", "x"]).error_recycling is False
    assert ap.parse_args(["train", "--out", "x", "--error-recycling"]).error_recycling is True
    assert parse_error_recycling_config(["p_clean=0.5", "capacity=7", "replacement=oldest"]) == ErrorRecyclingConfig(
        p_clean=0.5, capacity=7, replacement="oldest")
    for item, msg in (("p_clen=0.5", "KEY one of num_buckets"), ("capacity=big", "capacity='big' is not a int"),
                      ("p_noise=2", "p_noise=2.0 must lie in"), ("target=x", "target='x' is not one of")):
        with pytest.raises(ValueError, match=msg):
            parse_error_recycling_config([item])
    bad = ap.parse_args(["train", "--out", str(tmp_path / "x"), "--error-recycling-config", "p_clean=0.5"])
    with pytest.raises(ValueError, match="add --error-recycling"):
        bad.func(bad)
