"""Teacher-forcing objective, its block-causal mask, and Balanced / traditional SP on 2 gloo ranks (spec 04)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longlive.model.dit import build_model
from longlive.model.presets import get_preset
from longlive.parallel.groups import shutdown_parallel
from longlive.train.balanced import (
    balanced_mask_mod,
    balanced_sp_loss,
    local_frame_range,
    traditional_mask_mod,
    traditional_sp_loss,
)
from longlive.train.teacher_forcing import (
    MaskedAttention,
    dense_mask,
    frame_schedule,
    loss_weight_table,
    sigma_table,
    teacher_forcing_loss,
    tf_mask_mod,
)

SP = 2
FRAMES = 8  # tiny preset: chunk 2 → 4 blocks, 2 per rank; 16 tokens per frame; 4 heads → 2 per rank
PROMPTS = 4


# -- schedule ---------------------------------------------------------------------------------------------------


def test_sigma_table():
    sigmas, t = sigma_table()
    assert sigmas.shape == t.shape == (1000,)
    u = torch.linspace(1, 0, 1001, dtype=torch.float64)[:-1]
    torch.testing.assert_close(sigmas.double(), 5 * u / (1 + 4 * u), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, 1000 * sigmas)
    assert t[0] == 1000 and bool((t[1:] < t[:-1]).all())
    assert abs(float(t[-1]) - 5000 * 0.001 / 1.004) < 1e-3


def test_loss_weights():
    _, t = sigma_table()
    w = loss_weight_table()
    assert float(w[0]) == 0.0 and t[0] == 1000  # the minimum over the table is at t = 1000
    assert bool((w >= 0).all())
    assert abs(float(w.mean()) - 1) < 1e-5
    peak = int(w.argmax())
    assert abs(float(w[peak]) - 2.08) < 0.01 and abs(float(t[peak]) - 500) < 5


def test_frame_schedule_bf16_snapping():
    sigmas, t = sigma_table()
    w = loss_weight_table()
    idx = torch.tensor([0, 137, 500, 999])
    s = frame_schedule(idx, chunk_frames=2)
    assert s.t.shape == s.sigma.shape == s.weight.shape == (8,)
    assert torch.equal(s.t, s.t.to(torch.bfloat16).float())  # BF16-representable
    assert torch.equal(s.t[0::2], s.t[1::2])  # shared within a block
    assert float(s.t[0]) == 1000 and float(s.sigma[0]) == 1 and float(s.weight[0]) == 0
    for b in range(4):
        j = int((t - s.t[2 * b]).abs().argmin())  # snapped to the nearest entry to the rounded t
        assert float(s.sigma[2 * b]) == float(sigmas[j]) and float(s.weight[2 * b]) == float(w[j])
    big = s.t[s.t > 512]
    assert bool((big % 4 == 0).all())


# -- mask -------------------------------------------------------------------------------------------------------


def _frame_mask(mask: torch.Tensor, tpf: int) -> torch.Tensor:
    """Token mask [L, L] → frame mask, after checking it is constant on every frame × frame tile."""
    n = mask.shape[0] // tpf
    tiles = mask.view(n, tpf, n, tpf)
    assert bool((tiles.all(dim=(1, 3)) == tiles.any(dim=(1, 3))).all())
    return tiles.any(dim=(1, 3))


@pytest.mark.parametrize("blocks", [1, 3, 4, 12])
def test_tf_mask_density_and_rules(blocks):
    tpf, chunk = 3, 2
    frames = blocks * chunk
    mask = dense_mask(tf_mask_mod(frames, tpf, chunk), 2 * frames * tpf)
    # density (N+1)/(4N), checked exactly: allowed pairs · 4N = (N+1) · L²
    assert int(mask.sum()) * 4 * blocks == (blocks + 1) * mask.numel()
    fm = _frame_mask(mask, tpf)
    for q in range(2 * frames):
        for k in range(2 * frames):
            qn, qb, kn, kb = q >= frames, (q % frames) // chunk, k >= frames, (k % frames) // chunk
            if not qn and not kn:
                want = kb <= qb  # clean i sees clean 0..i
            elif qn and not kn:
                want = kb < qb  # noisy i sees clean 0..i-1
            elif qn and kn:
                want = kb == qb  # ... and noisy i only
            else:
                want = False  # clean never sees noisy
            assert bool(fm[q, k]) == want, (q, k)


def _balanced_to_natural(frames: int, sp: int) -> list[int]:
    """For each frame slot of the Balanced gathered order, its slot in the natural [clean ; noisy] order."""
    local = frames // sp
    order = []
    for r in range(sp):
        order += [r * local + j for j in range(local)]  # clean_r
        order += [frames + r * local + j for j in range(local)]  # noisy_r
    return order


@pytest.mark.parametrize("sp", [1, 2, 4])
def test_balanced_mask_is_the_natural_mask_permuted(sp):
    tpf, chunk, frames = 2, 2, 8
    nat = dense_mask(tf_mask_mod(frames, tpf, chunk), 2 * frames * tpf)
    bal = dense_mask(balanced_mask_mod(frames, sp, tpf, chunk), 2 * frames * tpf)
    perm = torch.tensor([s * tpf + i for s in _balanced_to_natural(frames, sp) for i in range(tpf)])
    assert torch.equal(bal, nat[perm][:, perm])
    assert torch.equal(dense_mask(traditional_mask_mod(frames, tpf, chunk), 2 * frames * tpf), nat)


def test_flex_equals_dense():
    torch.manual_seed(0)
    tpf, chunk, frames = 16, 2, 8
    L = 2 * frames * tpf
    q, k, v = (torch.randn(1, L, 2, 32) for _ in range(3))
    for mm in (tf_mask_mod(frames, tpf, chunk), balanced_mask_mod(frames, 2, tpf, chunk)):
        dense = MaskedAttention(mm, L, "dense")(q, k, v)
        with torch.no_grad():
            flex = MaskedAttention(mm, L, "flex")(q, k, v)
        torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no CPU backward"):
        MaskedAttention(tf_mask_mod(frames, tpf, chunk), L, "flex")(q.requires_grad_(), k, v)


# -- the objective, single process and on 2 gloo ranks ------------------------------------------------------------


def _inputs(seed: int = 0) -> dict:
    cfg = get_preset("tiny")
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_hw
    x0 = torch.randn(1, cfg.in_channels, FRAMES, h, w, generator=g)
    blocks = FRAMES // cfg.chunk_frames
    return {
        "x0": x0, "noise": torch.randn(x0.shape, generator=g),
        "prompts": torch.randn(PROMPTS, cfg.text_len, cfg.text_dim, generator=g),
        "frame_prompt": (torch.arange(FRAMES) // cfg.chunk_frames) % PROMPTS,  # one prompt per block
        "t_index": torch.tensor([999, 420, 0, 640])[:blocks],  # index 0 is t = 1000 (weight 0); t > 512 rounds
    }


def _tf(model, d: dict, attn: str = "dense", weighting: str = "wan") -> torch.Tensor:
    return teacher_forcing_loss(model, d["x0"], d["prompts"], d["frame_prompt"], noise=d["noise"],
                                t_index=d["t_index"], attn=attn, loss_weighting=weighting)


def test_uniform_weighting_is_the_plain_mse():
    """'uniform' keeps the same t and σ and puts weight 1 everywhere; with every block at one timestep the release's
    loss is that timestep's w times the uniform loss, and the uniform loss is the plain velocity MSE."""
    idx = torch.tensor([5, 137, 500, 999])
    wan, uni = frame_schedule(idx, 2), frame_schedule(idx, 2, "uniform")
    assert torch.equal(wan.t, uni.t) and torch.equal(wan.sigma, uni.sigma)
    assert torch.equal(uni.weight, torch.ones(8)) and float(wan.weight[0]) < 0.01  # t = 999: 0.3 % of the peak
    with pytest.raises(ValueError, match="unknown loss weighting 'sd3'"):
        frame_schedule(idx, 2, "sd3")
    model = build_model(get_preset("tiny"), seed=0)
    d = dict(_inputs(), t_index=torch.full((FRAMES // 2,), 300))
    with torch.no_grad():
        w = float(loss_weight_table()[int((sigma_table()[1] - frame_schedule(d["t_index"], 2).t[0]).abs().argmin())])
        uniform = _tf(model, d, weighting="uniform")
        torch.testing.assert_close(_tf(model, d), w * uniform, rtol=1e-6, atol=0)
        sig = frame_schedule(d["t_index"], 2).sigma.view(1, 1, -1, 1, 1)
        x_t = (1 - sig) * d["x0"] + sig * d["noise"]
        seq = torch.cat([d["x0"], x_t], dim=2)
        t_seq = torch.cat([torch.zeros(FRAMES), frame_schedule(d["t_index"], 2).t])[None]
        mask = dense_mask(tf_mask_mod(FRAMES, 16, 2), 2 * FRAMES * 16)
        out = model(seq, t_seq, d["prompts"], frame_positions=list(range(FRAMES)) * 2,
                    attn_fn=lambda q, k, v, layer: torch.nn.functional.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2),
                    frame_prompt=torch.cat([d["frame_prompt"]] * 2))
        ref = (out[:, :, FRAMES:].double() - (d["noise"] - d["x0"]).double()).pow(2).mean()
        torch.testing.assert_close(uniform.double(), ref, rtol=1e-5, atol=0)


def test_teacher_forcing_loss_single_process():
    model = build_model(get_preset("tiny"), seed=0)
    d = _inputs()
    loss = _tf(model, d)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, _tf(model, d))  # deterministic given noise and t
    with torch.no_grad():
        torch.testing.assert_close(_tf(model, d, "flex"), loss.detach(), atol=1e-6, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The noisy half alone carries the loss: a block at t = 1000 (weight 0) and clean frames do not enter it
    # directly, but a future block's clean frames must not influence earlier noisy blocks at all.
    d2 = dict(d, x0=d["x0"].clone(), noise=d["noise"].clone())
    d2["t_index"] = torch.tensor([999, 420, 640, 0])  # the last block at t = 1000: weight 0
    base = _tf(model, d2).detach()
    d2["x0"][:, :, -2:] += 1.0  # perturb the last block (clean copy, its noisy copy and its target)
    torch.testing.assert_close(_tf(model, d2).detach(), base, atol=1e-6, rtol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def _worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=SP)
    try:
        d = torch.load(Path(tmp) / "inputs.pt")
        model = build_model(get_preset("tiny"), seed=0)
        results: dict = {}
        lo, hi = local_frame_range(FRAMES, rank, SP)
        chunk = model.cfg.chunk_frames
        local = {"x0_local": d["x0"][:, :, lo:hi], "noise_local": d["noise"][:, :, lo:hi],
                 "frame_prompt_local": d["frame_prompt"][lo:hi], "t_index_local": d["t_index"][lo // chunk:hi // chunk]}

        def balanced(attn: str = "dense") -> torch.Tensor:
            return balanced_sp_loss(model, local["x0_local"], d["prompts"], local["frame_prompt_local"],
                                    noise_local=local["noise_local"], t_index_local=local["t_index_local"], attn=attn)

        def traditional() -> torch.Tensor:
            return traditional_sp_loss(model, d["x0"], d["prompts"], d["frame_prompt"], noise=d["noise"],
                                       t_index=d["t_index"], attn="dense")

        for name, fn in (("balanced", balanced), ("traditional", traditional)):
            model.zero_grad(set_to_none=True)
            loss = fn()
            loss.backward()
            # The global loss is the mean over all noisy frames: equal frame counts per rank (balanced) or the
            # sp/F normalisation (traditional) make it the mean of the rank-local losses; gradients are averaged
            # over ranks exactly as FSDP/DDP would.
            results[name] = {
                "local": loss.detach(), "loss": _average(loss),
                "grads": {n: _average(p.grad) for n, p in model.named_parameters()},
            }
        with torch.no_grad():
            results["balanced_flex"] = _average(balanced("flex"))
            results["balanced_uniform"] = _average(balanced_sp_loss(
                model, local["x0_local"], d["prompts"], local["frame_prompt_local"], noise_local=local["noise_local"],
                t_index_local=local["t_index_local"], attn="dense", loss_weighting="uniform"))
            results["traditional_uniform"] = _average(traditional_sp_loss(
                model, d["x0"], d["prompts"], d["frame_prompt"], noise=d["noise"], t_index=d["t_index"],
                attn="dense", loss_weighting="uniform"))
        errors = {}
        for key, call in {
            "sp": lambda: balanced_sp_loss(model, local["x0_local"], d["prompts"], local["frame_prompt_local"],
                                           noise_local=local["noise_local"], t_index_local=local["t_index_local"],
                                           sp=4),
            "frames": lambda: balanced_sp_loss(
                model, local["x0_local"][:, :, :1], d["prompts"], local["frame_prompt_local"][:1],
                noise_local=local["noise_local"][:, :, :1], t_index_local=local["t_index_local"][:1]),
            "heads": lambda: balanced_sp_loss(build_model(get_preset("tiny").with_overrides(dim=96, num_heads=3)),
                                              local["x0_local"], d["prompts"], local["frame_prompt_local"],
                                              noise_local=local["noise_local"], t_index_local=local["t_index_local"]),
        }.items():
            try:
                call()
                errors[key] = ""
            except (ValueError, RuntimeError) as e:
                errors[key] = str(e)
        results["errors"] = errors
        torch.save(results, Path(tmp) / f"rank{rank}.pt")
    finally:
        shutdown_parallel()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_train_layouts_match_single_process(tmp_path):
    d = _inputs()
    torch.save(d, tmp_path / "inputs.pt")
    model = build_model(get_preset("tiny"), seed=0)
    ref = _tf(model, d)
    ref.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters()}
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=SP, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(SP)]
    for layout in ("balanced", "traditional"):
        got = ranks[0][layout]
        assert _rel(got["loss"], ref.detach()) < 1e-5, layout
        worst = max(_rel(got["grads"][n], g) for n, g in ref_grads.items())
        assert worst < 1e-5, (layout, worst)
        assert torch.equal(ranks[1][layout]["loss"], got["loss"])
    # Balanced spreads the loss over both ranks; traditional puts all of it on the last rank (clean on rank 0).
    assert all(float(r["balanced"]["local"]) > 0 for r in ranks)
    assert float(ranks[0]["traditional"]["local"]) == 0 and float(ranks[1]["traditional"]["local"]) > 0
    assert _rel(ranks[0]["balanced_flex"], ref.detach()) < 1e-5
    with torch.no_grad():
        uniform = _tf(model, d, weighting="uniform")
    assert _rel(ranks[0]["balanced_uniform"], uniform) < 1e-5 and _rel(ranks[0]["traditional_uniform"], uniform) < 1e-5
    assert _rel(uniform, ref.detach()) > 1e-2  # the weighting really changed the loss
    errs = ranks[0]["errors"]
    assert "world size mismatch" in errs["sp"]
    assert "divisible by sp·chunk" in errs["frames"]
    assert "attention heads" in errs["heads"]


def test_sp_needs_a_process_group():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    model = build_model(get_preset("tiny"), seed=0)
    d = _inputs()
    with pytest.raises(RuntimeError, match="process group"):
        balanced_sp_loss(model, d["x0"], d["prompts"], d["frame_prompt"], noise_local=d["noise"],
                         t_index_local=d["t_index"])
