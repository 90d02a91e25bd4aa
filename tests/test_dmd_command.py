"""`longlive dmd` (DMD as a command) on the tiny preset: the run's files, its LoRA at generation and in `lora merge`,
resume, every knob's effect, and bad input failing before any network is built."""

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from longlive.cli import main
from longlive.infer.scheduler import flow_sigmas, flow_timesteps
from longlive.model import dit
from longlive.model.checkpoint import load_generator, save_generator
from longlive.model.presets import PRESETS
from longlive.train import dmd_command
from longlive.train.dmd import DMDConfig, DMDTrainer, rollout, rollout_sigmas
from longlive.train.lora import load_lora, lora_modules, lora_state_dict

CFG = PRESETS["tiny"]


def _dmd_args(root, out, *extra: str) -> list[str]:
    return ["dmd", "--model", "tiny", "--checkpoint", str(root / "base.pt"), "--out", str(out), "--frames", "4",
            "--lora-rank", "4", "--lora-alpha", "4", "--lr", "1e-3", "--lr-critic", "1e-3", "--prompt", "a red circle",
            "--prompt", "a blue square", "--negative-prompt", "", "--cache-dir", str(root / "cache"), "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-step run from the CLI with update ratio 2, shared by the tests that read its outputs."""
    root = tmp_path_factory.mktemp("dmd")
    save_generator(dit.build_model(CFG, seed=0), root / "base.pt")
    out = root / "run"
    assert main(_dmd_args(root, out, "--train-steps", "2", "--dfake-gen-update-ratio", "2")) == 0
    return root, out


def test_dmd_command_writes_lora_metrics_summary_and_checkpoint(run):
    root, out = run
    lora = load_lora(out / "lora.pt")
    assert lora["step"] == 2 and lora["lora_rank"] == 4 and lora["lora_alpha"] == 4
    assert len(lora["generator_lora"]) == len(lora["critic_lora"]) == 2 * 10 * CFG.num_layers
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert [r["generator_updated"] for r in rows] == [True, False]  # ratio 2: the critic steps twice per generator
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["train_steps"], summary["generator_updates"], summary["critic_updates"]) == (2, 1, 2)
    assert summary["denoising_step_list"] == flow_timesteps(4) and summary["generate_steps"] == 4
    assert summary["config"]["dfake_gen_update_ratio"] == 2 and summary["rollout_frames_range"] == [4, 4]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert not list(out.rglob("*.tmp*"))


def _generate(root, name: str, *extra: str) -> torch.Tensor:
    out = root / name
    assert main(["generate", "--model", "tiny", "--frames", "2", "--steps", "2", "--decode", "none", "--no-progress",
                 "--cache-dir", str(root / "cache"), "--out", str(out), *extra]) == 0
    return load_file(str(out / "latents.safetensors"))["latents"]


def test_lora_loads_at_generation_and_in_lora_merge(run):
    root, out = run
    base = _generate(root, "g_base", "--checkpoint", str(root / "base.pt"))
    adapted = _generate(root, "g_lora", "--checkpoint", str(root / "base.pt"), "--lora", str(out / "lora.pt"))
    assert (adapted - base).abs().max() > 1e-4  # the distilled adapter changes the video
    assert main(["lora", "merge", "--base", str(root / "base.pt"), "--lora", str(out / "lora.pt"), "--out",
                 str(root / "merged.pt")]) == 0
    merged = _generate(root, "g_merged", "--checkpoint", str(root / "merged.pt"))
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)


def test_rerun_resumes_and_equals_an_uninterrupted_run(run, tmp_path):
    root, out = run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    assert main(_dmd_args(root, resumed, "--train-steps", "3", "--dfake-gen-update-ratio", "2")) == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert (summary["resumed_from"], summary["steps_this_run"], summary["train_steps"]) == (2, 1, 3)
    assert (summary["generator_updates"], summary["critic_updates"]) == (2, 3)
    assert [json.loads(ln)["step"] for ln in (resumed / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    straight = tmp_path / "straight"
    assert main(_dmd_args(root, straight, "--train-steps", "3", "--dfake-gen-update-ratio", "2")) == 0
    a, b = load_lora(resumed / "lora.pt"), load_lora(straight / "lora.pt")
    for which in ("generator_lora", "critic_lora"):
        assert a[which].keys() == b[which].keys()
        assert all(torch.equal(a[which][k], b[which][k]) for k in a[which]), which


@pytest.mark.parametrize("extra, message", [
    (["--denoising-step-list", "999", "999"], "not a step list"),
    (["--denoising-step-list", "1200", "500"], "not a step list"),
    (["--steps", "3", "--denoising-step-list", "999", "500"], "has 2 timesteps but steps=3"),
    (["--dfake-gen-update-ratio", "0"], "dfake_gen_update_ratio=0 must be ≥ 1"),
    (["--checkpoint", "missing.pt"], "generator checkpoint not found"),
    (["--real-score-checkpoint", "missing_real.pt"], "generator checkpoint not found"),
    (["--frames", "3"], "whole blocks"),
    (["--min-frames", "6"], "min_frames=6 is above frames=4"),
    (["--adapter", "none", "--dmd-quantised", "generator"], "cannot train"),
    (["--prompt-file", "missing.txt"], "--prompt-file"),
])
def test_bad_input_fails_before_any_network_is_built(run, tmp_path, monkeypatch, capsys, extra, message):
    root, _ = run

    def forbidden(*args, **kwargs):
        raise AssertionError("a network was built before the input was checked")

    monkeypatch.setattr(dit, "build_model", forbidden)
    monkeypatch.setattr(dmd_command, "load_text_for", forbidden)
    monkeypatch.chdir(tmp_path)
    assert main(_dmd_args(root, tmp_path / "out", "--train-steps", "1", *extra)) == 2
    assert message in capsys.readouterr().err
    args = [a for a in _dmd_args(root, tmp_path / "out") if a not in ("a red circle", "a blue square", "--prompt")]
    assert main(args) == 2
    assert "needs training prompts" in capsys.readouterr().err


# -- each knob, on the trainer the command builds -------------------------------------------------------------------


def _prompts():
    g = torch.Generator().manual_seed(0)
    while True:
        yield torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)


def _trainer(tmp_path, **knobs) -> DMDTrainer:
    cfg = DMDConfig(**{"frames": 2, "lora_rank": 2, "lora_alpha": 2, **knobs})
    return DMDTrainer(dit.build_model(CFG, seed=0).eval(), cfg, _prompts(), tmp_path)


@pytest.mark.parametrize("ratio", [1, 3])
def test_update_ratio_sets_critic_updates_per_generator_update(tmp_path, ratio):
    tr = _trainer(tmp_path, dfake_gen_update_ratio=ratio)
    calls = []

    def stub(kind, params):
        def loss(cond, shots=None):
            calls.append(kind)
            return sum(p.sum() for p in params) * 0.0, {}
        return loss

    tr.generator_loss, tr.critic_loss = stub("generator", tr.gen_params), stub("critic", tr.critic_params)
    outs = [tr.step() for _ in range(6)]
    assert [o["generator_updated"] for o in outs] == [i % ratio == 0 for i in range(6)]
    assert calls.count("critic") == 6 and calls.count("generator") == len(range(0, 6, ratio))
    assert tr.updates == {"generator": len(range(0, 6, ratio)), "critic": 6}


def _generator_loss(tr: DMDTrainer) -> float:
    state = tr.rng.get_state()
    loss, _ = tr.generator_loss(next(_prompts()))
    tr.rng.set_state(state)
    return float(loss.detach())


def test_guidance_scales_change_the_dmd_loss(tmp_path):
    tr = _trainer(tmp_path)
    critic_calls = []
    tr.critic.register_forward_hook(lambda *a: critic_calls.append(1))
    ref = _generator_loss(tr)
    assert len(critic_calls) == 1  # fake_guidance_scale 0: the conditional critic only
    tr.cfg.real_guidance_scale = 0.0
    assert _generator_loss(tr) != ref
    tr.cfg.real_guidance_scale, tr.cfg.fake_guidance_scale = 3.0, 1.5
    critic_calls.clear()
    assert _generator_loss(tr) != ref
    assert len(critic_calls) == 2  # ... and the negative prompt's


def test_rollout_length_is_drawn_from_the_range_in_whole_blocks(tmp_path):
    tr = _trainer(tmp_path, frames=8, min_frames=2)
    assert {tr._blocks() for _ in range(64)} == {1, 2, 3, 4}
    fixed = _trainer(tmp_path, frames=8)
    state = fixed.rng.get_state()
    assert {fixed._blocks() for _ in range(8)} == {4}
    assert torch.equal(fixed.rng.get_state(), state)  # a fixed length draws nothing: the default stream is unchanged
    x, _ = tr._rollout(tr.generator.text_kv(next(_prompts())), 1, grad=False)
    assert x.shape[2] % CFG.chunk_frames == 0 and 2 <= x.shape[2] <= 8


def test_denoising_step_list_sets_the_rollout_timesteps():
    assert rollout_sigmas(DMDConfig(steps=4, denoising_step_list=flow_timesteps(4))) == flow_sigmas(4)
    assert rollout_sigmas(DMDConfig(steps=2, timestep_shift=3.0)) == flow_sigmas(2, 3.0)
    model = dit.build_model(CFG, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, CFG.in_channels, CFG.chunk_frames, *CFG.latent_hw, generator=g)
    ctx = next(_prompts())
    outs = {}
    for steps in ([999, 500], [800, 300]):
        trace: list = []
        with torch.no_grad():
            outs[steps[0]] = rollout(model, model.text_kv(ctx), noise, num_blocks=1, exit_step=1, grad=False,
                                     trace=trace, sigmas=rollout_sigmas(DMDConfig(steps=2, denoising_step_list=steps)))
        assert [r[3] for r in trace if r[1] >= 0] == steps
    assert not torch.allclose(outs[999], outs[800])


def test_timestep_schedule_knobs_bound_the_dmd_timesteps(tmp_path):
    def shifted(t: float, shift: float = 5.0) -> float:
        u = t / 1000
        return 1000 * shift * u / (1 + (shift - 1) * u)

    free = _trainer(tmp_path)._t(4096, exit_step=2)
    sched = _trainer(tmp_path, ts_schedule=True, ts_schedule_max=True)
    t_from, t_to = (int(s * 1000) for s in sched.sigmas[2:4])  # 833, 624 on the 4-step grid
    bounded = sched._t(4096, exit_step=2)
    assert bounded.min() >= shifted(t_to) - 1e-3 and bounded.max() <= shifted(t_from) + 1e-3
    assert free.min() < shifted(t_to) and free.max() > shifted(t_from)
    low = _trainer(tmp_path, min_score_timestep=500)._t(4096, exit_step=2)
    assert low.min() >= shifted(500) - 1e-3 > free.min()
    unshifted = _trainer(tmp_path, timestep_shift=1.0)._t(4096, exit_step=2)
    assert unshifted.median() < free.median() - 100  # shift 5 pushes timesteps to high noise


def test_adapter_none_trains_every_generator_weight_and_saves_a_checkpoint(tmp_path):
    tr = _trainer(tmp_path, adapter="none", dfake_gen_update_ratio=1, lr=1e-3, lr_critic=1e-3)
    assert not lora_modules(tr.generator) and not lora_modules(tr.critic)
    assert len(tr.gen_params) == len(list(tr.generator.parameters()))
    before = {k: v.clone() for k, v in tr.generator.state_dict().items()}
    tr.step()
    path = tr.save()
    assert path.name == "generator.pt"
    loaded = dit.build_model(CFG, init=False)
    load_generator(loaded, path)
    changed = [k for k, v in loaded.state_dict().items() if not torch.equal(v, before[k])]
    assert "blocks.0.ffn.0.weight" in changed and "patch_embedding.weight" in changed


def test_lora_knobs_dropout_critic_adapter_and_learning_rates(tmp_path):
    tr = _trainer(tmp_path, lora_dropout=0.5, apply_to_critic=False, lr=3e-4, lr_critic=7e-5, betas=(0.5, 0.9),
                  betas_critic=(0.1, 0.99))
    drops = {type(m.lora_dropout["default"]).__name__ for m in lora_modules(tr.generator).values()}
    assert drops == {"Dropout"}
    with torch.no_grad():
        for n, p in tr.generator.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
        x = torch.randn(1, CFG.in_channels, 2, *CFG.latent_hw, generator=torch.Generator().manual_seed(2))
        t, ctx = torch.full((1, 2), 500.0), next(_prompts())
        assert not torch.equal(tr.generator(x, t, ctx), tr.generator(x, t, ctx))  # dropout acts in training
    assert not lora_modules(tr.critic) and len(tr.critic_params) == len(list(tr.critic.parameters()))
    assert tr.gen_opt.param_groups[0]["lr"] == 3e-4 and tr.gen_opt.param_groups[0]["betas"] == (0.5, 0.9)
    assert tr.critic_opt.param_groups[0]["lr"] == 7e-5 and tr.critic_opt.param_groups[0]["betas"] == (0.1, 0.99)
    assert load_lora(tr.save())["critic_lora"] is None
    assert len(lora_state_dict(tr.generator)) == 2 * 10 * CFG.num_layers


def test_separate_real_and_fake_score_checkpoints(run, tmp_path):
    root, _ = run
    for name, seed in (("real.pt", 1), ("fake.pt", 2)):
        save_generator(dit.build_model(CFG, seed=seed), tmp_path / name)
    parser = argparse.ArgumentParser()
    dmd_command.add_dmd_parser(parser.add_subparsers())
    a = parser.parse_args(_dmd_args(root, tmp_path / "out", "--real-score-checkpoint", str(tmp_path / "real.pt"),
                                    "--fake-score-checkpoint", str(tmp_path / "fake.pt")))
    tr = dmd_command.build_trainer(a)
    key = "patch_embedding.weight"
    for net, seed in ((tr.generator, 0), (tr.teacher, 1), (tr.critic, 2)):
        assert torch.equal(net.state_dict()[key], dit.build_model(CFG, seed=seed).state_dict()[key]), seed
