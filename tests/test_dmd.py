"""Stage 2 (DMD with LoRA) on the tiny preset: LoRA injection/merge/files, the on-policy rollout, trainer steps."""

import argparse
import copy

import pytest
import torch

from longlive.infer.pipeline import GenerationSpec, generate
from longlive.model.checkpoint import load_generator, read_generator_file, save_generator
from longlive.model.dit import build_model
from longlive.model.presets import PRESETS
from longlive.train.dmd import DMDConfig, DMDTrainer, dmd_gradient, dmd_loss, rollout, sample_dmd_t
from longlive.train.lora import (
    add_lora,
    add_lora_parser,
    load_lora,
    load_lora_weights,
    lora_modules,
    lora_state_dict,
    merge_lora_into_checkpoint,
    normalise_lora_keys,
    save_lora,
)

CFG = PRESETS["tiny"]


def _model(seed: int = 0):
    return build_model(CFG, seed=seed).eval()


def _inputs(frames: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h, w = CFG.latent_hw
    x = torch.randn(1, CFG.in_channels, frames, h, w, generator=g)
    t = torch.full((1, frames), 500.0)
    ctx = torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)
    return x, t, ctx


def _nudge(model, seed: int = 3, std: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * std)


def test_lora_touches_exactly_block_linears_and_starts_as_identity():
    base = _model()
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = base(x, t, ctx)
    model = add_lora(copy.deepcopy(base), lora_rank=8, alpha=16)
    names = sorted(lora_modules(model))
    assert len(names) == 10 * CFG.num_layers
    assert all(n.startswith("blocks.") for n in names)
    assert {n.split(".", 2)[2] for n in names} == {f"{a}.{b}" for a in ("self_attn", "cross_attn")
                                                   for b in "qkvo"} | {"ffn.0", "ffn.2"}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), ref)  # B = 0
    sd = lora_state_dict(model)
    assert len(sd) == 2 * 10 * CFG.num_layers
    assert all(k.startswith("base_model.model.blocks.") for k in sd)


def test_normalise_accepts_peft_spellings():
    t = torch.zeros(1)
    for key in ("base_model.model.blocks.0.ffn.0.lora_A.default.weight", "blocks.0.ffn.0.lora_A.weight",
                "model.blocks.0.ffn.0.lora_A.weight"):
        assert list(normalise_lora_keys({key: t})) == ["blocks.0.ffn.0.lora_A.weight"]
    with pytest.raises(ValueError):
        normalise_lora_keys({"blocks.0.ffn.0.weight": t})


def test_merged_checkpoint_equals_adapted_model(tmp_path):
    base = _model()
    base_path = save_generator(base, tmp_path / "base.pt")
    adapted = add_lora(copy.deepcopy(base), lora_rank=8, alpha=16)  # scale 2 catches a missing alpha/rank
    _nudge(adapted)
    lora_path = save_lora(tmp_path / "lora.pt", lora_state_dict(adapted), step=7, lora_rank=8, alpha=16)
    out = merge_lora_into_checkpoint(base_path, lora_path, tmp_path / "merged.pt")
    _, meta = read_generator_file(out)
    assert meta["merged_lora"] is True
    merged = build_model(CFG, init=False)
    load_generator(merged, out)
    x, t, ctx = _inputs()
    with torch.no_grad():
        a, m, b = adapted(x, t, ctx), merged(x, t, ctx), base(x, t, ctx)
    assert (a - b).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(m, a, rtol=1e-5, atol=1e-5)


def test_lora_file_round_trip(tmp_path):
    gen = add_lora(_model(), lora_rank=4, alpha=4)
    crit = add_lora(_model(1), lora_rank=4, alpha=4)
    _nudge(gen, 5)
    _nudge(crit, 6)
    save_lora(tmp_path / "l.pt", lora_state_dict(gen), lora_state_dict(crit), step=42)
    assert not list(tmp_path.glob("*.tmp"))
    got = load_lora(tmp_path / "l.pt")
    assert got["step"] == 42 and got["lora_rank"] == 4 and got["lora_alpha"] == 4
    for key, val in lora_state_dict(gen).items():
        assert torch.equal(got["generator_lora"][key], val)
    fresh = add_lora(_model(), lora_rank=4, alpha=4)
    load_lora_weights(fresh, got["generator_lora"])
    x, t, ctx = _inputs()
    with torch.no_grad():
        assert torch.equal(fresh(x, t, ctx), gen(x, t, ctx))
    with pytest.raises(ValueError):
        load_lora_weights(fresh, {k: v for k, v in list(got["generator_lora"].items())[2:]})


def test_cli_hook_writes_merged_checkpoint(tmp_path):
    base = _model()
    save_generator(base, tmp_path / "base.pt")
    adapted = add_lora(copy.deepcopy(base), lora_rank=4, alpha=4)
    _nudge(adapted)
    save_lora(tmp_path / "lora.pt", lora_state_dict(adapted))
    parser = argparse.ArgumentParser()
    add_lora_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["lora", "merge", "--base", str(tmp_path / "base.pt"), "--lora",
                              str(tmp_path / "lora.pt"), "--out", str(tmp_path / "m.pt")])
    assert args.func(args) == 0
    merged = build_model(CFG, init=False)
    assert load_generator(merged, tmp_path / "m.pt")["merged_lora"] is True
    x, t, ctx = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(merged(x, t, ctx), adapted(x, t, ctx), rtol=1e-5, atol=1e-5)


# -- rollout -------------------------------------------------------------------------------------------------------


def _noise(blocks: int, seed: int = 0):
    h, w = CFG.latent_hw
    g = torch.Generator().manual_seed(seed)
    # the pipeline's draw order: [B, F, C, H, W] then permute
    return torch.randn((1, blocks * CFG.chunk_frames, CFG.in_channels, h, w), generator=g).permute(0, 2, 1, 3, 4)


def test_rollout_at_last_exit_step_equals_inference():
    model = _model()
    ctx = _inputs()[2]
    blocks = CFG.window_frames // CFG.chunk_frames  # the whole rollout fits the inference window
    with torch.no_grad():
        ours = rollout(model, model.text_kv(ctx), _noise(blocks), num_blocks=blocks, exit_step=3, grad=False)
    ref = generate(model, GenerationSpec(prompts=["x"], frames=blocks * CFG.chunk_frames, steps=4, seed=0),
                   [ctx]).latents
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exit_step", [0, 2])
def test_rollout_gradients_flow_only_through_the_exit_step(exit_step):
    gen = add_lora(_model(), lora_rank=4, alpha=4)
    _nudge(gen)
    ctx = _inputs()[2]
    trace: list = []
    x = rollout(gen, gen.text_kv(ctx), _noise(3), num_blocks=3, exit_step=exit_step, grad=True, trace=trace)
    assert x.requires_grad
    for b in range(3):
        rows = [r for r in trace if r[0] == b]
        assert [r[1] for r in rows] == [*range(exit_step + 1), -1]  # later steps skipped, then the refresh
        assert [r[2] for r in rows] == [False] * exit_step + [True, False]
    x.sum().backward()
    grads = [p.grad for n, p in gen.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads)
    assert all(p.grad is None for n, p in gen.named_parameters() if "lora_" not in n)
    # each block's gradient reaches only its own exit forward: the cache holds detached K/V of the t = 0 refresh
    gen.zero_grad(set_to_none=True)
    fired: list[int] = []
    calls: list[int] = []

    def hook(module, args, out):
        calls.append(len(calls))
        if out.requires_grad:
            idx = calls[-1]
            out.register_hook(lambda g: fired.append(idx) if g.abs().sum() > 0 else None)

    handle = gen.register_forward_hook(hook)
    trace = []
    x = rollout(gen, gen.text_kv(ctx), _noise(3), num_blocks=3, exit_step=exit_step, grad=True, trace=trace)
    handle.remove()
    exits = [i for i, r in enumerate(trace) if r[2]]  # forward index of each block's exit step
    assert len(exits) == 3
    cf = CFG.chunk_frames
    x[:, :, cf : 2 * cf].sum().backward()  # cat's backward hands the other blocks exact zeros
    assert fired == [exits[1]]
    with torch.no_grad():
        assert not rollout(gen, gen.text_kv(ctx), _noise(1), num_blocks=1, exit_step=1, grad=False).requires_grad


# -- loss pieces -----------------------------------------------------------------------------------------------------


def test_dmd_timesteps_are_shifted_and_clamped():
    t = sample_dmd_t(4096, DMDConfig(), torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980
    assert (t > 500).float().mean() > 0.7  # shift 5 pushes mass to high noise


def test_dmd_gradient_is_normalised_per_sample_and_block():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2, generator=g, requires_grad=True)
    real, fake = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 3, 4, 2, 2, generator=g)
    grad = dmd_gradient(x, fake, real, chunk_frames=2)
    blk = (x.detach() - real)[1, :, 2:4].abs().mean()
    torch.testing.assert_close(grad[1, :, 2:4], ((fake - real)[1, :, 2:4] / blk).double())
    loss = dmd_loss(x, grad)
    assert loss.dtype == torch.float64
    loss.backward()
    torch.testing.assert_close(x.grad.double(), grad / x.numel())


# -- trainer -----------------------------------------------------------------------------------------------------------


def _prompts(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(1, CFG.text_len, CFG.text_dim, generator=g)


def test_dmd_default_learning_rates_are_the_releases(tmp_path):
    """The release's configs/train_dmd.yaml: generator (LoRA) lr 1e-5, critic lr 2e-6, betas (0, 0.999) for both."""
    tr = DMDTrainer(_model(), DMDConfig(frames=4, lora_rank=4, lora_alpha=4), _prompts(), tmp_path)
    assert [g["lr"] for g in tr.gen_opt.param_groups] == [1e-5]
    assert [g["lr"] for g in tr.critic_opt.param_groups] == [2e-6]
    assert tr.gen_opt.param_groups[0]["betas"] == tr.critic_opt.param_groups[0]["betas"] == (0.0, 0.999)


def test_dmd_steps_update_on_schedule_and_keep_base_frozen(tmp_path):
    base = _model()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = DMDConfig(frames=4, lora_rank=4, lora_alpha=4, lr=1e-3, lr_critic=1e-3)
    tr = DMDTrainer(base, cfg, _prompts(), tmp_path)

    def lora(model):
        return {k: v.clone() for k, v in lora_state_dict(model).items()}

    def frozen(model):
        return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}

    gen_base, critic_base = frozen(tr.generator), frozen(tr.critic)
    for i in range(6):
        g0, c0 = lora(tr.generator), lora(tr.critic)
        out = tr.step()
        g1, c1 = lora(tr.generator), lora(tr.critic)
        gen_changed = any(not torch.equal(g0[k], g1[k]) for k in g0)
        crit_changed = any(not torch.equal(c0[k], c1[k]) for k in c0)
        assert out["generator_updated"] == (i % 5 == 0) == gen_changed, i
        assert crit_changed, i
        assert torch.isfinite(torch.tensor(out["critic_loss"]))
        if out["generator_updated"]:
            assert torch.isfinite(torch.tensor(out["generator_loss"]))
    for k, v in base.state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    for model, ref in ((tr.generator, gen_base), (tr.critic, critic_base)):
        for k, v in frozen(model).items():
            assert torch.equal(v, ref[k]), k
    path = tr.save()
    got = load_lora(path)
    assert got["step"] == 6 and got["critic_lora"] is not None
    assert all(torch.equal(got["generator_lora"][k], v) for k, v in lora_state_dict(tr.generator).items())


def test_activation_checkpointing_gives_the_same_generator_gradients():
    """AC recomputes each block in backward after later blocks were committed to the rollout cache; the pinned
    attn_fn must make the recompute attend to exactly what the forward saw."""
    from longlive.train.trainer import apply_activation_checkpointing

    grads = []
    for ac in (False, True):
        torch.manual_seed(0)  # PEFT draws lora_A from the global RNG
        gen = add_lora(_model(), lora_rank=4, alpha=4)
        _nudge(gen)
        if ac:
            apply_activation_checkpointing(gen)
        ctx = _inputs()[2]
        x = rollout(gen, gen.text_kv(ctx), _noise(3), num_blocks=3, exit_step=1, grad=True)
        (x * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
        grads.append({n: p.grad.clone() for n, p in gen.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)


def test_dmd_with_quantised_frozen_networks_steps_and_shrinks_weights(tmp_path):
    from longlive.quant.linear import QuantLinear
    from longlive.quant.recipes import model_weight_bytes

    cfg = DMDConfig(frames=4, lora_rank=4, lora_alpha=4, quant_generator="nvfp4", quant_teacher="nvfp4",
                    quant_critic="fp8", activation_checkpointing=True)
    tr = DMDTrainer(_model(), cfg, _prompts(), tmp_path)
    for net, kind in ((tr.generator, "nvfp4"), (tr.teacher, "nvfp4"), (tr.critic, "fp8")):
        q = [m for m in net.modules() if isinstance(m, QuantLinear)]
        assert len(q) == 10 * CFG.num_layers and all(m.cfg.fmt == kind and not m.cfg.act_quant for m in q)
    assert model_weight_bytes(tr.teacher) < model_weight_bytes(_model())
    for _ in range(2):
        out = tr.step()
        assert torch.isfinite(torch.tensor(out["critic_loss"]))
    assert out["generator_updated"] is False
    with pytest.raises(ValueError, match="quant_critic='int4'"):
        DMDConfig(quant_critic="int4")


def test_multi_shot_rollout_equals_inference_with_a_scene_cut():
    """Scene cuts in the rollout (spec 04): block prompts switch and the shot's RoPE offset applies, exactly as the
    inference pipeline does for a 'The scene transitions.' prompt (the whole rollout fits the window)."""
    from longlive.train.dmd import ShotPlan

    model = _model()
    g = torch.Generator().manual_seed(5)
    ctx = torch.randn(2, CFG.text_len, CFG.text_dim, generator=g)
    blocks = CFG.window_frames // CFG.chunk_frames
    plan = ShotPlan((0, 0, 1, 1))
    assert plan.shots == [0, 0, 1, 1]
    assert plan.frame_positions(2, 8)[4:6] == [4 + 8, 5 + 8]
    with torch.no_grad():
        ours = rollout(model, model.text_kv(ctx), _noise(blocks), num_blocks=blocks, exit_step=3, grad=False,
                       shots=plan)
        single = rollout(model, model.text_kv(ctx[:1]), _noise(blocks), num_blocks=blocks, exit_step=3, grad=False)
    spec = GenerationSpec(prompts=["a", "The scene transitions. b"], frames=blocks * CFG.chunk_frames, steps=4,
                          seed=0, switch_chunks=[2])
    assert spec.texts == ["a", "The scene transitions. b", "b"]  # the shot's later chunk: the bare caption
    ref = generate(model, spec, [ctx[:1], ctx[1:], ctx[1:]]).latents  # the rollout gives shot 1 one text
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours[:, :, 4:], single[:, :, 4:], atol=1e-3)  # the cut changed the second shot


def test_dmd_trainer_takes_multi_shot_prompts(tmp_path):
    g = torch.Generator().manual_seed(0)

    def items():
        while True:
            yield {"prompts_embeds": torch.randn(2, CFG.text_len, CFG.text_dim, generator=g), "block_prompt": [0, 1]}

    tr = DMDTrainer(_model(), DMDConfig(frames=4, lora_rank=4, lora_alpha=4), items(), tmp_path)
    out = tr.step()
    assert out["generator_updated"] and torch.isfinite(torch.tensor([out["generator_loss"], out["critic_loss"]])).all()

    def bad():
        while True:
            yield {"prompts_embeds": torch.randn(2, CFG.text_len, CFG.text_dim), "block_prompt": [0, 2]}

    with pytest.raises(ValueError, match="block_prompt"):
        DMDTrainer(_model(), DMDConfig(frames=4, lora_rank=4, lora_alpha=4), bad(), tmp_path).step()
