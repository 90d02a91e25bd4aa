"""I2V teacher forcing and validation during training (CPU, tiny preset).

I2V: latent 0 is the clean conditioning image exactly as `generate --image` treats it (never noised, t = 0, no loss,
same prediction as generation's chunk 0). Validation: every `validate_every` steps the prompt set is generated from
the EMA weights through the assembler, strips + metrics.json land in the run folder and scalars + strips in
TensorBoard event files; it leaves training untouched, survives its own failure, and writes nothing when off.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.checkpoint import read_generator_file
from longlive.model.dit import build_model
from longlive.model.kv_cache import CacheGeometry, KVCache
from longlive.model.presets import get_preset
from longlive.train import validation as validation_mod
from longlive.train.teacher_forcing import (
    MaskedAttention,
    add_noise,
    batched_teacher_forcing_loss,
    condition_first_frame,
    frame_schedule,
    teacher_forcing_loss,
    tf_mask_mod,
    weighted_frame_mse,
)
from longlive.train.trainer import ARTrainer, RandomLatentData, TrainConfig, add_train_parser
from longlive.train.validation import TINY_VALIDATION_PROMPTS

MC = get_preset("tiny")
CF = MC.chunk_frames
FRAMES = 2 * CF


def sample(seed: int = 0, frames: int = FRAMES):
    g = torch.Generator().manual_seed(seed)
    h, w = MC.latent_hw
    x0 = torch.randn(1, MC.in_channels, frames, h, w, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    pe = torch.randn(1, MC.text_len, MC.text_dim, generator=g)
    return x0, noise, pe


class Recorder:
    """Wraps a model's forward: records (input, t) of every call and can add `bump` to the output's frame `frame` of
    the noisy half, to show which outputs the loss reads."""

    def __init__(self, model, bump: float = 0.0, frame: int = 0):
        self.model, self.bump, self.frame, self.calls = model, bump, frame, []
        self.inner = model.forward
        model.forward = self

    def __call__(self, x, t, *args, **kw):
        self.calls.append((x.detach().clone(), t.detach().clone()))
        out = self.inner(x, t, *args, **kw)
        if self.bump:
            out = out.clone()
            out[:, :, x.shape[2] // 2 + self.frame] += self.bump
        return out


def tf_loss(model, x0, noise, pe, t_index, **kw) -> torch.Tensor:
    return teacher_forcing_loss(model, x0, pe, torch.zeros(x0.shape[2], dtype=torch.long), noise=noise,
                                t_index=t_index, attn="dense", **kw)


# -- I2V objective ------------------------------------------------------------------------------------------------


def test_i2v_latent0_is_never_noised_runs_at_t0_and_carries_no_loss():
    model = build_model(MC, seed=1).eval()
    x0, noise, pe = sample()
    t_index = torch.tensor([300, 800])
    rec = Recorder(model)
    with torch.no_grad():
        loss = tf_loss(model, x0, noise, pe, t_index, i2v=True)
    (seq, t), = rec.calls
    clean, noisy = seq[:, :, :FRAMES], seq[:, :, FRAMES:]
    assert torch.equal(clean, x0)                            # the clean copy is the data
    assert torch.equal(noisy[:, :, 0], x0[:, :, 0])          # latent 0 is the image, bit for bit
    sched = frame_schedule(t_index, CF)
    assert torch.equal(noisy[:, :, 1:], add_noise(x0, noise, sched.sigma)[:, :, 1:])  # the rest as in T2V
    assert not torch.equal(noisy[:, :, 1], x0[:, :, 1])
    assert t[0, FRAMES] == 0 and torch.equal(t[0, FRAMES + 1:], sched.t[1:])  # t = 0 for the image only
    assert sched.t[0] > 0 and torch.equal(t[0, :FRAMES], torch.zeros(FRAMES))

    # the loss is the mean over latents 1..F−1 of the weighted per-frame MSE
    with torch.no_grad():
        v_hat = rec.inner(seq, t, pe, frame_positions=list(range(FRAMES)) * 2,
                          attn_fn=tf_attention(FRAMES),
                          frame_prompt=torch.zeros(2 * FRAMES, dtype=torch.long))[:, :, FRAMES:]
    per_frame = weighted_frame_mse(v_hat, noise - x0, condition_first_frame(sched).weight)
    torch.testing.assert_close(loss, per_frame[:, 1:].mean())

    # a change of the image frame's prediction leaves the I2V loss exactly as it was, and moves the T2V one
    for i2v, same in ((True, True), (False, False)):
        with torch.no_grad():
            base = tf_loss(build_model(MC, seed=1).eval(), x0, noise, pe, t_index, i2v=i2v)
            bumped_model = build_model(MC, seed=1).eval()
            Recorder(bumped_model, bump=100.0, frame=0)
            bumped = tf_loss(bumped_model, x0, noise, pe, t_index, i2v=i2v)
        assert torch.equal(base, bumped) == same, (i2v, base, bumped)


def tf_attention(frames: int):
    """The teacher-forcing mask as the model's attn_fn (what `teacher_forcing_loss` passes)."""
    masked = MaskedAttention(tf_mask_mod(frames, MC.tokens_per_frame, CF), 2 * frames * MC.tokens_per_frame, "dense")
    return lambda q, k, v, layer: masked(q, k, v)


def test_i2v_prediction_equals_generation_chunk0_with_the_image():
    """`generate(image_latent=…)` puts the image in latent 0 at t = 0 for every step of chunk 0; the I2V teacher-
    forcing forward predicts block 0 exactly as that chunk's forward over the (empty) cache does."""
    model = build_model(MC, seed=2).eval()
    x0, noise, pe = sample(1)
    image = x0[:, :, :1]
    rec = Recorder(model)
    spec = GenerationSpec(prompts=["a"], frames=CF, steps=2, seed=0)
    generate(model, spec, [pe for _ in spec.texts], image_latent=image)
    for x, t in rec.calls:  # every step and the clean re-run: the image at t = 0
        assert torch.equal(x[:, :, 0], image[:, :, 0]) and torch.all(t[:, 0] == 0)
    assert any(torch.all(t[:, 1:] > 0) for _, t in rec.calls)  # the other frames do get denoised

    rec.calls.clear()
    t_index = torch.tensor([500, 100])
    with torch.no_grad():
        tf_loss(model, x0, noise, pe, t_index, i2v=True)
        (seq, t_seq), = rec.calls
        v_tf = rec.inner(seq, t_seq, pe, frame_positions=list(range(FRAMES)) * 2, attn_fn=tf_attention(FRAMES),
                         frame_prompt=torch.zeros(2 * FRAMES, dtype=torch.long))[:, :, FRAMES:FRAMES + CF]
        geo = CacheGeometry(CF, MC.window_frames, MC.sink_frames, MC.tokens_per_frame, True)
        cache = KVCache.allocate(geo, MC.num_layers, 1, MC.num_heads, MC.head_dim, storage="fp32", device="cpu",
                                 compute_dtype=torch.float32)
        cache.begin_chunk(0)
        x = add_noise(x0, noise, frame_schedule(t_index, CF).sigma)[:, :, :CF].clone()
        t = frame_schedule(t_index, CF).t[:CF][None].clone()
        x[:, :, :1], t[:, 0] = image, 0  # what generate does to chunk 0
        v_gen = rec.inner(x, t, text_kv=model.text_kv(pe), frame_offset=0, cache=cache)
    torch.testing.assert_close(v_gen, v_tf, rtol=1e-4, atol=1e-5)


def test_batched_i2v_is_the_mean_of_single_sample_i2v_losses():
    model = build_model(MC, seed=3).eval()
    parts = [sample(s) for s in (4, 5)]
    t_index = torch.tensor([[10, 900], [600, 400]])
    x0, noise, pe = (torch.cat([p[i] for p in parts]) for i in range(3))
    with torch.no_grad():
        single = [tf_loss(model, *p[:2], p[2], t_index[b], i2v=True) for b, p in enumerate(parts)]
        batched = batched_teacher_forcing_loss(model, x0, pe, noise=noise, t_index=t_index, attn="dense", i2v=True)
        t2v = batched_teacher_forcing_loss(model, x0, pe, noise=noise, t_index=t_index, attn="dense")
    torch.testing.assert_close(batched, sum(single) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batched, t2v)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_the_trainer_conditions_latent0_only_when_i2v(tmp_path, batch_size):
    """TrainConfig.i2v reaches the objective on the single-sample and the batched path."""
    for i2v in (True, False):
        data = RandomLatentData(MC, FRAMES, seed=0, num_prompts=1)
        cfg = TrainConfig(train_steps=1, progress=False, i2v=i2v, batch_size=batch_size, attn="dense")
        tr = ARTrainer(build_model(MC, seed=0), cfg, data, tmp_path / f"{i2v}{batch_size}")
        rec = Recorder(tr.model)
        samples = [next(data) for _ in range(batch_size)]
        with torch.no_grad():
            tr.compute_loss(samples if batch_size > 1 else samples[0], 0)
        (seq, t), = rec.calls
        x0 = torch.cat([smp["x0"] for smp in samples])
        assert torch.equal(seq[:, :, FRAMES], x0[:, :, 0]) == i2v
        assert bool((t[:, FRAMES] == 0).all()) == i2v and bool((t[:, FRAMES + 1] > 0).all())


# -- validation during training -----------------------------------------------------------------------------------


def trainer(tmp, *, steps=2, **kw) -> ARTrainer:
    cfg = TrainConfig(train_steps=steps, lr=1e-3, progress=False, ckpt_every=100, **kw)
    return ARTrainer(build_model(MC, seed=0), cfg, RandomLatentData(MC, FRAMES, seed=0), tmp)


def losses(d) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (d / "metrics.jsonl").read_text().splitlines()]


def test_validation_every_step_writes_strips_metrics_and_tensorboard(tmp_path, monkeypatch):
    seen = []
    real = validation_mod.make_video

    def spy(req, out):  # the weights validation generates from: read before the file is removed
        seen.append(read_generator_file(req.checkpoint)[0])
        return real(req, out)

    monkeypatch.setattr(validation_mod, "make_video", spy)
    on = tmp_path / "on"
    tr = trainer(on, validate_every=1, validation_frames=CF, ema_start=0, ema_decay=0.5)
    tr.run()
    for step in (1, 2):
        d = on / "validation" / f"step_{step}"
        m = json.loads((d / "metrics.json").read_text())
        assert m["step"] == step and m["weights"] == "ema" and m["frames"] == CF
        assert [v["prompt"] for v in m["videos"]] == list(TINY_VALIDATION_PROMPTS)
        for i, v in enumerate(m["videos"]):
            assert (d / str(i) / "strip.png").exists() and v["strip"] == f"{i}/strip.png"
            assert 0.0 <= v["temporal_flickering"] <= 1.0 and 0.0 <= v["palette_match"] <= 1.0
            assert 0.0 <= v["foreground_fraction"] <= 1.0 and "shape_match" in v
        assert set(m["mean"]) >= {"temporal_flickering", "palette_match", "foreground_fraction"}
    assert not (on / "validation" / "generator.safetensors").exists()
    # the last validation generated from the EMA weights, which here differ from the live ones
    ema, live = tr._ema_state(), tr._model_state()
    assert len(seen) == 4 and all(torch.equal(seen[-1][k], ema[k]) for k in ema)
    assert any(not torch.equal(seen[-1][k], live[k]) for k in live)

    acc = EventAccumulator(str(on / "tb"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    for tag in ("validation/temporal_flickering", "validation/palette_match", "validation/0/palette_match",
                "train/loss", "train/grad_norm", "train/lr"):
        assert tag in scalars, (tag, scalars)
    assert [e.step for e in acc.Scalars("validation/palette_match")] == [1, 2]
    means = [json.loads((on / "validation" / f"step_{s}" / "metrics.json").read_text())["mean"] for s in (1, 2)]
    assert [e.value for e in acc.Scalars("validation/palette_match")] == pytest.approx(
        [m["palette_match"] for m in means], rel=1e-6)
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses(on), rel=1e-6)
    assert {"validation/0/strip", "validation/1/strip"} <= set(acc.Tags()["images"])

    # validate_every=0 writes nothing, and validation did not change the training trajectory
    off = tmp_path / "off"
    tr_off = trainer(off, validate_every=0, ema_start=0, ema_decay=0.5)
    tr_off.run()
    assert not (off / "validation").exists() and not (off / "tb").exists()
    assert losses(off) == losses(on)
    assert all(torch.equal(a, b) for a, b in zip(tr_off.model.state_dict().values(), tr.model.state_dict().values(),
                                                  strict=True))


def test_a_failed_validation_is_logged_and_training_goes_on_unless_strict(tmp_path, monkeypatch, caplog):
    def broken(req, out):
        raise RuntimeError("decoder on fire")

    monkeypatch.setattr(validation_mod, "make_video", broken)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: --wandb warns and TensorBoard still logs
    with caplog.at_level(logging.WARNING, logger="longlive.train.validation"):
        summary = trainer(tmp_path / "lenient", validate_every=1, wandb=True).run()
    assert summary["train_steps"] == 2 and len(losses(tmp_path / "lenient")) == 2
    for step in (1, 2):
        err = (tmp_path / "lenient" / "validation" / f"step_{step}" / "error.txt").read_text()
        assert "decoder on fire" in err
    assert "wandb package is not installed" in caplog.text and "validation at step 1 failed" in caplog.text
    with pytest.raises(RuntimeError, match="decoder on fire"):
        trainer(tmp_path / "strict", validate_every=1, validation_strict=True).run()
    assert len(losses(tmp_path / "strict")) == 1  # stopped at the first validation


def test_i2v_training_with_image_validation_from_the_cli(tmp_path, capsys):
    image = tmp_path / "first.png"
    Image.new("RGB", (MC.width, MC.height), (128, 128, 128)).save(image)
    ap = argparse.ArgumentParser()
    add_train_parser(ap.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = ["train", "--model", "tiny", "--train-steps", "1", "--frames", str(FRAMES), "--out", str(out),
            "--data", "random", "--no-progress", "--no-activation-checkpointing", "--no-fsdp", "--i2v",
            "--validate-every", "1", "--validation-frames", str(CF), "--validation-prompt", "A red circle."]
    no_image = ap.parse_args(args)
    with pytest.raises(ValueError, match="validation_images"):
        no_image.func(no_image)
    a = ap.parse_args([*args, "--validation-image", str(image)])
    assert a.func(a) == 0
    m = json.loads((out / "validation" / "step_1" / "metrics.json").read_text())
    assert [(v["prompt"], v["image"]) for v in m["videos"]] == [("A red circle.", str(image))]
    assert json.loads((out / "summary.json").read_text())["train_steps"] == 1
    with pytest.raises(ValueError, match="validate_every"):
        TrainConfig(validate_every=-1)
