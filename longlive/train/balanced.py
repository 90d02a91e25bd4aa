"""Balanced sequence parallelism for teacher-forcing training (spec 04, "Balanced SP"), and the traditional baseline.

Balanced: rank r of an SP group owns the contiguous latent frames [r·F/sp, (r+1)·F/sp) and builds BOTH copies of
them locally, [clean_r ; noisy_r], with their own RoPE positions, prompts and timesteps. Every rank then holds the
same number of tokens and the same number of loss tokens, and after the Ulysses all-to-all every rank runs the
full masked attention on H/sp heads, so all work is exactly 1/sp whatever the causal structure. The gathered
sequence is in the "natural" order [r0_clean, r0_noisy, r1_clean, r1_noisy, …]; the mask decodes rank, half and
block straight from the token index, so nothing is permuted.

Traditional: ranks hold contiguous slices of the global [clean ; noisy] sequence (clean history on the first ranks,
the noisy target on the last), so the gathered order is the single-process order and all the loss sits on the
last ranks. It exists as the baseline the paper compares against.

Both return a rank-local loss whose mean over the SP group is the global loss (the mean over all F noisy frames of
the weighted per-frame MSE), so averaging gradients over ranks (what FSDP does) gives the global gradient: the
all-to-all backward routes every rank's loss gradient to the rank that computed those tokens.

Error recycling (`longlive.train.error_recycling`; the release runs it at sp = 4): pass the same `recycler` state and
a `recycle_generator` seeded identically on every rank of the group. The injection is planned over all F frames
(Balanced: from the all-gathered block timesteps) and each rank adds its own frames' deltas; after the forward the
ranks' errors are all-gathered and every rank records all F frames in frame order. So the group's banks stay
identical, and loss, gradients and banks equal those of one process training the whole sample (tested at sp = 2).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from longlive.parallel.ulysses import all_to_all_4d
from longlive.train.error_recycling import ErrorRecycler
from longlive.train.teacher_forcing import (
    AttnFn,
    MaskedAttention,
    MaskMod,
    add_noise,
    check_tf_shapes,
    frame_schedule,
    mask_mod_from,
    tf_mask_mod,
    weighted_frame_mse,
)

LAYOUTS = ("balanced", "traditional")


def _group_info(group, sp: int | None) -> tuple[int, int]:
    """(size, rank) of the SP group, with a clear error when it is not what the caller expects."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sequence-parallel training needs an initialised torch.distributed process group")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if sp is not None and sp != size:
        raise ValueError(f"world size mismatch: sp={sp} but the SP process group has {size} ranks")
    return size, rank


def _check_heads(model, size: int) -> None:
    heads = model.cfg.num_heads
    if heads % size:
        raise ValueError(f"sp={size} does not divide the model's {heads} attention heads (Ulysses splits heads)")


def _check_same_shapes(x: torch.Tensor, group, what: str) -> None:
    """All ranks must hold equally shaped inputs, else the all-to-all would fail obscurely (or hang)."""
    mine = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    shapes = [tuple(p.tolist()) for p in parts]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"SP ranks hold differently shaped {what}: {shapes}")


def _gather(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    """All ranks' equally shaped `x` (detached) concatenated along `dim` in group-rank order (no autograd)."""
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def _check_recycling(recycler: ErrorRecycler | None, generator: torch.Generator | None) -> None:
    if recycler is not None and generator is None:
        raise ValueError("error recycling under SP needs recycle_generator, seeded alike on every rank of the group "
                         "(by the group's first rank), so the ranks draw the same injection")


def local_frame_range(frames: int, rank: int, sp: int) -> tuple[int, int]:
    """Balanced SP: rank r owns latent frames [r·F/sp, (r+1)·F/sp)."""
    if frames % sp:
        raise ValueError(f"F = {frames} latent frames are not divisible by sp = {sp}")
    per = frames // sp
    return rank * per, (rank + 1) * per


def balanced_decoder(frames: int, sp: int, tokens_per_frame: int, chunk_frames: int):
    """Token index of the gathered [r0_clean, r0_noisy, r1_clean, …] sequence → (is_noisy, global block)."""
    local = frames // sp

    def decode(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slot = idx // tokens_per_frame
        rank, j = slot // (2 * local), slot % (2 * local)
        return j >= local, (rank * local + j % local) // chunk_frames

    return decode


def balanced_mask_mod(frames: int, sp: int, tokens_per_frame: int, chunk_frames: int) -> MaskMod:
    """The teacher-forcing rule on the Balanced-SP natural order (sp = 1 is the single-process mask)."""
    return mask_mod_from(balanced_decoder(frames, sp, tokens_per_frame, chunk_frames))


def traditional_mask_mod(frames: int, tokens_per_frame: int, chunk_frames: int) -> MaskMod:
    """Traditional SP shards the global [clean ; noisy] sequence contiguously, so its gathered order is the
    single-process order and the mask is the single-process one."""
    return tf_mask_mod(frames, tokens_per_frame, chunk_frames)


def ulysses_attn_fn(masked: MaskedAttention, group) -> AttnFn:
    """attn_fn for the model: q, k, v (already rotated) sequence→heads in one all-to-all, masked attention on
    the full sequence for this rank's heads, output heads→sequence. Both exchanges are differentiable."""

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        B = q.shape[0]
        qkv = all_to_all_4d(torch.cat([q, k, v]), group, to_heads=True)
        qf, kf, vf = qkv.split(B)
        return all_to_all_4d(masked(qf, kf, vf).contiguous(), group, to_heads=False)

    return attend


def balanced_sp_loss(
    model,
    x0_local: torch.Tensor,
    prompts_embeds: torch.Tensor,
    frame_prompt_local: torch.Tensor,
    *,
    noise_local: torch.Tensor,
    t_index_local: torch.Tensor,
    group=None,
    sp: int | None = None,
    attn: str = "auto",
    loss_weighting: str = "wan",
    recycler: ErrorRecycler | None = None,
    recycle_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """This rank's teacher-forcing loss under Balanced SP; its mean over the SP group is the global loss.

    x0_local / noise_local [1, C, F/sp, H, W]: this rank's contiguous frames (see `local_frame_range`);
    frame_prompt_local [F/sp] indexes prompts_embeds (which may hold only this rank's prompts);
    t_index_local [F/(sp·chunk)]: this rank's blocks' table indices. Every rank must call this (collectives).
    recycler / recycle_generator: error recycling as in `teacher_forcing_loss`, consistent over the group (module
    docstring).
    """
    size, rank = _group_info(group, sp)
    chunk = model.cfg.chunk_frames
    local = x0_local.shape[2]
    if local % chunk:
        raise ValueError(
            f"Balanced SP needs F divisible by sp·chunk = {size}·{chunk}; got F = {local * size} "
            f"({local} frames per rank)"
        )
    _check_heads(model, size)
    _, tpf = check_tf_shapes(model, x0_local, t_index_local, frame_prompt_local)
    _check_same_shapes(x0_local, group, "latents")
    _check_recycling(recycler, recycle_generator)
    frames = local * size
    dev = x0_local.device
    sched = frame_schedule(t_index_local, chunk, loss_weighting)
    ctx, x_t = x0_local, add_noise(x0_local, noise_local, sched.sigma)
    target = noise_local - x0_local
    if recycler is not None:
        # every block's timestep (all ranks), so the group plans the whole sample's injection alike
        t_all = _gather(torch.as_tensor(t_index_local).long().reshape(-1).to(dev), group, 0).cpu()
        block = frame_schedule(t_all, chunk, loss_weighting)
        shape = (1, x0_local.shape[1], frames, *x0_local.shape[3:])
        inj = recycler.plan(block.t[::chunk], block.sigma[::chunk], shape, chunk, recycle_generator, dev,
                            frames=(rank * local, (rank + 1) * local))
        if inj is not None:
            ctx = (x0_local.float() + inj.context).to(x0_local.dtype)
            x_t = (x_t.float() + inj.latent).to(x0_local.dtype)
            if recycler.cfg.target == "corrective":
                target = target.float() + inj.latent / sched.sigma.to(dev, torch.float32).view(1, 1, -1, 1, 1)
    seq = torch.cat([ctx, x_t], dim=2)
    t_seq = torch.cat([torch.zeros(local), sched.t]).to(dev)[None]
    positions = list(range(rank * local, (rank + 1) * local)) * 2
    fp = torch.as_tensor(frame_prompt_local, device=dev).long()
    masked = MaskedAttention(balanced_mask_mod(frames, size, tpf, chunk), 2 * frames * tpf, attn,
                             cache_key=("balanced", frames, size, tpf, chunk))
    out = model(seq, t_seq, prompts_embeds, frame_positions=positions, attn_fn=ulysses_attn_fn(masked, group),
                frame_prompt=torch.cat([fp, fp]))
    v_hat = out[:, :, local:]
    if recycler is not None:
        errs: tuple[torch.Tensor | None, ...] = (None, None)
        if recycler.next_record_kept():  # the same decision on every rank: gather only what will be kept
            errs = tuple(None if e is None else _gather(e, group, 2)
                         for e in recycler.errors(x_t, v_hat, x0_local, noise_local, sched.sigma))
        recycler.record_errors(block.t[::chunk], *errs, chunk)
    return weighted_frame_mse(v_hat, target, sched.weight).mean()


def traditional_sp_loss(
    model,
    x0: torch.Tensor,
    prompts_embeds: torch.Tensor,
    frame_prompt: torch.Tensor,
    *,
    noise: torch.Tensor,
    t_index: torch.Tensor,
    group=None,
    sp: int | None = None,
    attn: str = "auto",
    loss_weighting: str = "wan",
    recycler: ErrorRecycler | None = None,
    recycle_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """This rank's loss under the traditional layout; its mean over the SP group is the global loss.

    Takes the GLOBAL sample (x0, noise [1, C, F, H, W], frame_prompt [F], t_index [F/chunk], identical on every
    rank) because a rank's slice of [clean ; noisy] needs both x0 and the noising of its frames. Rank r holds
    sequence frames [r·2F/sp, (r+1)·2F/sp). Normalisation: local = (sp / F) · Σ over its noisy frames of
    w·MSE, so ranks holding only clean frames contribute 0 (but still backpropagate through the all-to-alls)
    and the mean over ranks is Σ_all noisy / F, the global mean. With a recycler every rank plans the whole
    sample's injection alike and records from the all-gathered output (module docstring).
    """
    size, rank = _group_info(group, sp)
    chunk = model.cfg.chunk_frames
    _check_heads(model, size)
    frames, tpf = check_tf_shapes(model, x0, t_index, frame_prompt)
    if (2 * frames) % size:
        raise ValueError(f"traditional SP needs 2F divisible by sp; got F = {frames}, sp = {size}")
    _check_same_shapes(x0, group, "latents")
    _check_recycling(recycler, recycle_generator)
    dev = x0.device
    sched = frame_schedule(t_index, chunk, loss_weighting)
    per = 2 * frames // size
    sl = slice(rank * per, (rank + 1) * per)
    ctx, x_t = x0, add_noise(x0, noise, sched.sigma)
    target = noise - x0
    if recycler is not None:
        inj = recycler.plan(sched.t[::chunk], sched.sigma[::chunk], x0.shape, chunk, recycle_generator, dev)
        if inj is not None:
            ctx = (x0.float() + inj.context).to(x0.dtype)
            x_t = (x_t.float() + inj.latent).to(x0.dtype)
            if recycler.cfg.target == "corrective":
                target = target.float() + inj.latent / sched.sigma.to(dev, torch.float32).view(1, 1, -1, 1, 1)
    seq = torch.cat([ctx, x_t], dim=2)[:, :, sl]
    t_seq = torch.cat([torch.zeros(frames), sched.t])[sl].to(dev)[None]
    positions = (list(range(frames)) * 2)[sl]
    fp = torch.as_tensor(frame_prompt, device=dev).long()
    target = torch.cat([torch.zeros_like(target), target], dim=2)[:, :, sl]
    weight = torch.cat([torch.zeros(frames), sched.weight])[sl]
    masked = MaskedAttention(traditional_mask_mod(frames, tpf, chunk), 2 * frames * tpf, attn,
                             cache_key=("natural", frames, tpf, chunk))
    out = model(seq, t_seq, prompts_embeds, frame_positions=positions, attn_fn=ulysses_attn_fn(masked, group),
                frame_prompt=torch.cat([fp, fp])[sl])
    if recycler is not None:
        errs: tuple[torch.Tensor | None, ...] = (None, None)
        if recycler.next_record_kept():  # the same decision on every rank: gather only what will be kept
            v_hat = _gather(out, group, 2)[:, :, frames:]  # the whole noisy half, rank slices in sequence order
            errs = recycler.errors(x_t, v_hat, x0, noise, sched.sigma)
        recycler.record_errors(sched.t[::chunk], *errs, chunk)
    return weighted_frame_mse(out, target, weight).sum(dim=1).mean() * (size / frames)


def sp_loss(layout: str, *args, **kwargs) -> torch.Tensor:
    """Dispatch by layout name ('balanced' takes this rank's frames, 'traditional' the global sample)."""
    if layout == "balanced":
        return balanced_sp_loss(*args, **kwargs)
    if layout == "traditional":
        return traditional_sp_loss(*args, **kwargs)
    raise ValueError(f"unknown SP layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
