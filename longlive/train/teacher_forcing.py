"""Stage-1 teacher-forcing flow-matching objective on one process (spec 04, "Stage 1", "Teacher-forcing layout").

The model sees [clean copy of all F frames ; noisy copy] in one forward pass. Both copies of frame f share RoPE
position f and block f // chunk's prompt; the clean copy runs at t = 0. A block-causal mask makes the noisy block i
see the clean history 0..i−1 and itself, so one pass trains every block as if it were generated autoregressively.
Only the noisy half's velocity enters the loss. Sequence parallelism (`longlive.train.balanced`) reuses every
piece here; only the layout of the tokens and how the mask decodes them differ.

I2V (`i2v=True`, the release's `i2v` / `independent_first_frame`): latent 0 is the clean conditioning image, exactly
as generation treats `--image` (`infer.pipeline.generate`, spec 02): it stays inside block 0, not a block of its own
(the release's I2V clips are 32 latents in blocks of 8, and the causal VAE already encodes frame 0 alone), is never
noised, runs at t = 0 in both copies, gets no error-recycling injection, and is left out of the loss (the mean runs
over the other F − 1 frames). The mask is unchanged: noisy block 0 sees itself, clean latent 0 included, as chunk 0
does at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

if TYPE_CHECKING:
    from longlive.train.error_recycling import ErrorRecycler

NUM_TRAIN_TIMESTEPS = 1000
SHIFT = 5.0

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
ATTN_BACKENDS = ("auto", "flex", "dense", "blocked")
# "wan": the release's w(t), near 0 at t → 1000, made for fine-tuning a model that already denoises pure noise;
# "uniform": w = 1, for training from scratch, where the first step from pure noise (t = 999) must be learned
# too — under "wan" its weight is 0.3 % of the peak, and the tiny default's first chunks stayed noise (run9).
LOSS_WEIGHTINGS = ("wan", "uniform")


# -- the flow-matching schedule ---------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _table(num: int, shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u = torch.linspace(1.0, 0.0, num + 1)[:-1]  # float32, as the released scheduler builds it
    sigmas = shift * u / (1 + (shift - 1) * u)
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    y = torch.exp(-2 * ((timesteps - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
    y = y - y.min()
    weights = y * (num / y.sum())  # mean 1 over the table
    return sigmas, timesteps, weights


def sigma_table(num: int = NUM_TRAIN_TIMESTEPS, shift: float = SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, t) [num] float32, descending: u = linspace(1, 0, num+1)[:-1], σ = shift·u/(1+(shift−1)u), t = 1000σ."""
    sigmas, timesteps, _ = _table(num, shift)
    return sigmas.clone(), timesteps.clone()


def loss_weight_table(num: int = NUM_TRAIN_TIMESTEPS, shift: float = SHIFT) -> torch.Tensor:
    """w over the table: exp(−2((t−500)/1000)²) minus its minimum, rescaled to mean 1 (0 at t = 1000, ≈2.08 peak)."""
    return _table(num, shift)[2].clone()


def snap_index(t: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """Index of the nearest table entry for each t (look-ups snap; BF16-rounded t is not on the table)."""
    if timesteps is None:
        timesteps = _table(NUM_TRAIN_TIMESTEPS, SHIFT)[1]
    timesteps = timesteps.to(t.device)
    return (timesteps[None, :] - t.float().reshape(-1, 1)).abs().argmin(dim=1).reshape(t.shape)


@dataclass
class FrameSchedule:
    """Per-frame quantities of one sample's noisy copy: what the time embedding, the noising and the loss see."""

    t: torch.Tensor       # [F] float32 holding BF16-representable values (what the time embedding sees)
    sigma: torch.Tensor   # [F] σ of the snapped table entry (noising)
    weight: torch.Tensor  # [F] loss weight of the snapped table entry


def frame_schedule(t_index: torch.Tensor, chunk_frames: int, weighting: str = "wan") -> FrameSchedule:
    """Block timestep indices [N] → per-frame schedule [N·chunk]; `weighting` picks the loss weight (LOSS_WEIGHTINGS).

    The drawn t is cast to BF16 first (spacing 4 above t = 512, as the released trainer does by running the
    timestep tensor in BF16), and the noising σ and the loss weight are looked up at the table entry nearest to
    that rounded t, so all three stay consistent with each other.
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}")
    sigmas, timesteps, weights = _table(NUM_TRAIN_TIMESTEPS, SHIFT)
    if weighting == "uniform":
        weights = torch.ones_like(weights)
    t_index = torch.as_tensor(t_index).long().reshape(-1).cpu()
    if t_index.numel() and (t_index.min() < 0 or t_index.max() >= NUM_TRAIN_TIMESTEPS):
        raise ValueError(f"t_index must lie in [0, {NUM_TRAIN_TIMESTEPS}), got {t_index.tolist()}")
    t = timesteps[t_index].to(torch.bfloat16).float()
    idx = snap_index(t, timesteps)
    return FrameSchedule(
        t=t.repeat_interleave(chunk_frames), sigma=sigmas[idx].repeat_interleave(chunk_frames),
        weight=weights[idx].repeat_interleave(chunk_frames),
    )


def condition_first_frame(sched: FrameSchedule) -> FrameSchedule:
    """I2V: latent 0 becomes the clean conditioning frame — t = 0 (what generation's time embedding sees for the
    image), σ = 0 (never noised) and loss weight 0. The block draws of the other frames are untouched."""
    t, sigma, weight = sched.t.clone(), sched.sigma.clone(), sched.weight.clone()
    t[0], sigma[0], weight[0] = 0.0, 0.0, 0.0
    return FrameSchedule(t=t, sigma=sigma, weight=weight)


# How block timesteps are drawn. "table": uniform over the 1000 entries of the shift-5 table (the release), so σ is
# skewed high: half the draws have σ > 0.83 and 8 % have σ < 0.3. "sigma": σ uniform on (0, 1), mapped to the
# nearest table entry, for training from scratch, where the low-σ steps that draw edges and flat backgrounds have
# to be learned as well.
TIMESTEP_DENSITIES = ("table", "sigma")


def sample_t_index(num_blocks: int, generator: torch.Generator | None = None, density: str = "table") -> torch.Tensor:
    """One table index per block, drawn by `density` (TIMESTEP_DENSITIES; seed the generator with base seed +
    rank). Both densities take exactly one draw per block from the generator."""
    if density == "table":
        return torch.randint(0, NUM_TRAIN_TIMESTEPS, (num_blocks,), generator=generator)
    if density == "sigma":
        sigma = torch.rand((num_blocks,), generator=generator, dtype=torch.float64)
        u = sigma / (SHIFT - (SHIFT - 1) * sigma)  # inverts σ = shift·u / (1 + (shift − 1)·u)
        return ((1 - u) * NUM_TRAIN_TIMESTEPS).round().long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)
    raise ValueError(f"unknown timestep density {density!r}; choose one of {', '.join(TIMESTEP_DENSITIES)}")


def _per_frame(v: torch.Tensor, device: torch.device) -> torch.Tensor:
    """σ or w per latent frame, [F] (shared by the batch) or [B, F] → [B or 1, 1, F, 1, 1] float32."""
    v = v.to(device=device, dtype=torch.float32)
    return v.view(v.shape[0] if v.dim() == 2 else 1, 1, -1, 1, 1)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1−σ)·x0 + σ·ε with σ per latent frame (x0 [B, C, F, H, W], σ [F] or per sample [B, F])."""
    s = _per_frame(sigma, x0.device)
    return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)


def weighted_frame_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-frame MSE over (C, H, W) times the frame's weight ([F], or per sample [B, F]) → [B, F] (float32)."""
    per_frame = (pred.float() - target.float()).pow(2).mean(dim=(1, 3, 4))
    w = weight.to(per_frame.device, torch.float32)
    return per_frame * (w if w.dim() == 2 else w[None])


# -- the block-causal teacher-forcing mask ----------------------------------------------------------------------


@dataclass(frozen=True)
class TFWindow:
    """The inference KV window, in blocks, as a teacher-forcing mask sees it (`tf_window`).

    At generation chunk c attends the sink chunks 0..sink−1 and the newest `blocks − sink` chunks up to itself
    (`longlive.model.kv_cache`: [sink | c−2 | c−1 | c] for the tiny preset's 4 slots, sink 1). The release trains with
    the whole causal history instead, so a model trained on clips longer than its window never sees the context it
    is given at inference: a sink many RoPE positions behind the chunk, the chunks between them gone. With a window
    the clean context each block sees is exactly the window it would attend at generation (the cache stores the
    clean re-run's K/V, which saw the same window), and positions stay absolute, so long clips teach long sink
    distances. A clip no longer than the window sees everything either way: the mask equals the unwindowed one.
    """

    blocks: int  # chunk slots of the window (window_frames // chunk_frames)
    sink: int    # sink slots (sink_frames // chunk_frames)

    def __post_init__(self) -> None:
        if not 0 <= self.sink < self.blocks:
            raise ValueError(f"a teacher-forcing window of {self.blocks} blocks needs 0 ≤ sink < blocks, got sink "
                             f"{self.sink}")

    def visible(self, q_block: torch.Tensor, k_block: torch.Tensor) -> torch.Tensor:
        """Whether block k lies in block q's window (for k ≤ q): a sink block, or one of the newest blocks − sink."""
        return (k_block < self.sink) | (k_block > q_block - (self.blocks - self.sink))

    def covers(self, num_blocks: int) -> bool:
        """Whether every block of an N-block clip sees its whole history (the mask is then the unwindowed one)."""
        return num_blocks <= self.blocks

    def clean_blocks(self, block: int) -> list[int]:
        """The clean blocks block `block` attends (itself included), in order."""
        return [j for j in range(block + 1) if j < self.sink or j > block - (self.blocks - self.sink)]


def tf_window_of(cfg) -> TFWindow:
    """The model preset's inference window (window_frames, sink_frames) in blocks of chunk_frames."""
    for name in ("window_frames", "sink_frames"):
        if getattr(cfg, name) % cfg.chunk_frames:
            raise ValueError(f"{name}={getattr(cfg, name)} is not whole chunks of {cfg.chunk_frames}: no "
                             f"teacher-forcing window matches it")
    return TFWindow(cfg.window_frames // cfg.chunk_frames, cfg.sink_frames // cfg.chunk_frames)


def tf_rule(q_noisy: torch.Tensor, q_block: torch.Tensor, k_noisy: torch.Tensor, k_block: torch.Tensor,
            window: TFWindow | None = None) -> torch.Tensor:
    """Spec 04: clean i sees clean 0..i; noisy i sees clean 0..i−1 and noisy i; clean never sees noisy. With a
    `window`, clean keys are further limited to block i's inference window (`TFWindow`)."""
    sees_clean = ~k_noisy & ((k_block < q_block) | ((k_block == q_block) & ~q_noisy))
    if window is not None:
        sees_clean = sees_clean & window.visible(q_block, k_block)
    sees_noisy = k_noisy & q_noisy & (k_block == q_block)
    return sees_clean | sees_noisy


def natural_decoder(frames: int, tokens_per_frame: int, chunk_frames: int):
    """Token index of [clean F frames ; noisy F frames] → (is_noisy, block)."""

    def decode(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        slot = idx // tokens_per_frame
        return slot >= frames, (slot % frames) // chunk_frames

    return decode


def mask_mod_from(decode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                  window: TFWindow | None = None) -> MaskMod:
    """FlexAttention mask_mod applying the teacher-forcing rule to whatever token order `decode` describes."""

    def mask_mod(b, h, q_idx, kv_idx):
        qn, qb = decode(q_idx)
        kn, kb = decode(kv_idx)
        return tf_rule(qn, qb, kn, kb, window)

    return mask_mod


def tf_mask_mod(frames: int, tokens_per_frame: int, chunk_frames: int, window: TFWindow | None = None) -> MaskMod:
    """The teacher-forcing mask on the natural single-process order [clean ; noisy] (windowed with `window`)."""
    return mask_mod_from(natural_decoder(frames, tokens_per_frame, chunk_frames), window)


def dense_mask(mask_mod: MaskMod, length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean [L, L] (True = attend) evaluated from the same mask_mod (CPU training and tests)."""
    idx = torch.arange(length, device=device)
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, idx[:, None], idx[None, :])


_COMPILED_FLEX = None


def _flex_attention():
    """flex_attention compiled once (on GPU eager Flex is a slow reference path)."""
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def resolve_attn(attn: str, device: torch.device | str, windowed: bool = False) -> str:
    """auto → Flex on CUDA; elsewhere the dense mask (CPU FlexAttention has no backward), or, for a clip longer than
    its `tf_window`, the blocked gather (`blocked_tf_attention`), whose cost grows with the clip, not its square."""
    if attn not in ATTN_BACKENDS:
        raise ValueError(f"unknown teacher-forcing attention {attn!r}; choose one of {', '.join(ATTN_BACKENDS)}")
    if attn == "auto":
        return "flex" if torch.device(device).type == "cuda" else ("blocked" if windowed else "dense")
    return attn


def window_gather(num_blocks: int, window: TFWindow) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, W] block indices, [N, W] valid): the clean blocks each block attends, padded with block 0 (invalid) to
    the window's W = min(blocks, N) entries."""
    width = min(window.blocks, num_blocks)
    idx = torch.zeros(num_blocks, width, dtype=torch.long)
    valid = torch.zeros(num_blocks, width, dtype=torch.bool)
    for i in range(num_blocks):
        seen = window.clean_blocks(i)
        idx[i, :len(seen)] = torch.tensor(seen)
        valid[i, :len(seen)] = True
    return idx, valid


def blocked_tf_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, tokens_per_frame: int,
                         chunk_frames: int, window: TFWindow) -> torch.Tensor:
    """The windowed teacher-forcing attention on [B, L, H, D] in the natural order [clean ; noisy], block by block.

    Each block's 2T queries (its clean and noisy tokens, T = chunk · tokens per frame) attend a gathered key set:
    the clean blocks of its window and its own noisy block, with a [2T, (W+1)T] mask (noisy queries skip their own
    clean block, clean queries every noisy one). All blocks run as one batched SDPA, so the work is N·2T·(W+1)T
    instead of the dense mask's (2NT)². Equal to the dense windowed mask up to summation order.
    """
    B, L, H, D = q.shape
    n, t = frames // chunk_frames, chunk_frames * tokens_per_frame
    if L != 2 * n * t or k.shape[1] != L:
        raise ValueError(f"blocked teacher-forcing attention built for {2 * n * t} tokens got q {L}, k {k.shape[1]}")
    idx, valid = window_gather(n, window)
    idx, valid = idx.to(q.device), valid.to(q.device)
    w = idx.shape[1]

    def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :n * t].reshape(B, n, t, H, D), x[:, n * t:].reshape(B, n, t, H, D)

    (qc, qn), (kc, kn), (vc, vn) = halves(q), halves(k), halves(v)
    # [B, N, 2T, H, D] queries; [B, N, (W+1)T, H, D] keys / values: the window's clean blocks, then the own noisy one
    qq = torch.cat([qc, qn], dim=2)
    kk = torch.cat([kc[:, idx].reshape(B, n, w * t, H, D), kn], dim=2)
    vv = torch.cat([vc[:, idx].reshape(B, n, w * t, H, D), vn], dim=2)
    own = torch.arange(n, device=q.device)[:, None]
    clean_ok = torch.stack([valid, valid & (idx < own)], dim=1)  # [N, 2 (clean/noisy query), W]
    noisy_ok = torch.tensor([False, True], device=q.device)[None, :, None].expand(n, 2, 1)
    ok = torch.cat([clean_ok, noisy_ok], dim=2)  # [N, 2, W+1] per (query half, key block)
    mask = ok[:, :, None, :, None].expand(n, 2, t, w + 1, t).reshape(n, 2 * t, (w + 1) * t)
    out = F.scaled_dot_product_attention(
        qq.permute(0, 1, 3, 2, 4).reshape(B * n, H, 2 * t, D), kk.permute(0, 1, 3, 2, 4).reshape(B * n, H, -1, D),
        vv.permute(0, 1, 3, 2, 4).reshape(B * n, H, -1, D), attn_mask=mask.repeat(B, 1, 1)[:, None])
    out = out.reshape(B, n, H, 2 * t, D).permute(0, 1, 3, 2, 4)  # [B, N, 2T, H, D]
    return torch.cat([out[:, :, :t].reshape(B, n * t, H, D), out[:, :, t:].reshape(B, n * t, H, D)], dim=1)


_MASK_CACHE: dict[tuple, object] = {}


class MaskedAttention:
    """Masked attention on [B, L, H, D]; the mask (dense or BlockMask) is built once and reused by every layer.

    With a `cache_key` (everything the mask depends on) the mask is also reused across training steps, since on
    GPU building a BlockMask for ~170k tokens is not free.
    """

    def __init__(self, mask_mod: MaskMod, length: int, attn: str = "auto", cache_key: tuple | None = None):
        self.mask_mod, self.length, self.attn, self.cache_key = mask_mod, length, attn, cache_key
        self._mask = None

    def _get_mask(self, kind: str, device: torch.device):
        if self._mask is not None:
            return self._mask
        key = None if self.cache_key is None else (*self.cache_key, self.length, kind, str(device))
        if key is not None and key in _MASK_CACHE:
            self._mask = _MASK_CACHE[key]
            return self._mask
        if kind == "dense":
            self._mask = dense_mask(self.mask_mod, self.length, device)
        else:
            self._mask = create_block_mask(self.mask_mod, None, None, self.length, self.length, device=device,
                                           _compile=device.type == "cuda")
        if key is not None:
            if len(_MASK_CACHE) >= 8:
                _MASK_CACHE.pop(next(iter(_MASK_CACHE)))
            _MASK_CACHE[key] = self._mask
        return self._mask

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[1] != self.length or k.shape[1] != self.length:
            raise ValueError(f"masked attention built for {self.length} tokens got q {q.shape[1]}, k {k.shape[1]}")
        kind = resolve_attn(self.attn, q.device)
        if kind == "blocked":
            raise ValueError("attn='blocked' is the windowed teacher-forcing gather; it has no MaskedAttention form")
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        mask = self._get_mask(kind, q.device)
        if kind == "dense":
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        else:
            if q.device.type != "cuda" and torch.is_grad_enabled() and q.requires_grad:
                raise ValueError("FlexAttention has no CPU backward; use attn='dense' (or 'auto') for CPU training")
            fn = _flex_attention() if q.device.type == "cuda" else flex_attention
            out = fn(qh, kh, vh, block_mask=mask)
        return out.transpose(1, 2)


# -- the objective ------------------------------------------------------------------------------------------------


def check_tf_shapes(model, x0: torch.Tensor, t_index: torch.Tensor, frame_prompt: torch.Tensor) -> tuple[int, int]:
    """Validate one sample's shapes; returns (frames, tokens_per_frame)."""
    cfg = model.cfg
    if x0.dim() != 5 or x0.shape[0] != 1:
        raise ValueError(f"teacher forcing takes one sample x0 [1, C, F, H, W], got {tuple(x0.shape)}")
    pt, ph, pw = cfg.patch_size
    if pt != 1:
        raise ValueError("teacher forcing assumes one latent frame per token frame (temporal patch 1)")
    frames = x0.shape[2]
    chunk = cfg.chunk_frames
    if frames % chunk:
        raise ValueError(f"{frames} latent frames are not whole blocks of {chunk}")
    blocks = torch.as_tensor(t_index).numel()
    if blocks != frames // chunk:
        raise ValueError(f"need one timestep index per block ({frames // chunk}), got {blocks}")
    if torch.as_tensor(frame_prompt).numel() != frames:
        raise ValueError(f"frame_prompt needs one prompt index per latent frame ({frames})")
    return frames, (x0.shape[3] // ph) * (x0.shape[4] // pw)


def _noised(x0: torch.Tensor, noise: torch.Tensor, sched: FrameSchedule, chunk: int,
            recycler: ErrorRecycler | None, generator: torch.Generator | None, i2v: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One sample's (clean context, noisy input, velocity target), with this step's error-recycling injection drawn
    from `generator` when a recycler is given (see `teacher_forcing_loss`). `sched` holds the block draws; with
    `i2v` latent 0 is noised by `condition_first_frame` (not at all) and gets no injection, since the image that
    conditions generation is exact."""
    frame = condition_first_frame(sched) if i2v else sched
    x_t = add_noise(x0, noise, frame.sigma)
    target = noise - x0
    if recycler is None:
        return x0, x_t, target
    inj = recycler.plan(sched.t[::chunk], sched.sigma[::chunk], x0.shape, chunk, generator, x0.device)
    if inj is None:
        return x0, x_t, target
    if i2v:
        inj.context[:, :, :1] = 0
        inj.latent[:, :, :1] = 0
    ctx = (x0.float() + inj.context).to(x0.dtype)
    x_t = (x_t.float() + inj.latent).to(x0.dtype)
    if recycler.cfg.target == "corrective":
        target = target.float() + inj.latent / _per_frame(sched.sigma, x0.device)
    return ctx, x_t, target


def check_i2v(frames: int) -> None:
    """I2V needs a frame besides the conditioning one to carry the loss."""
    if frames < 2:
        raise ValueError(f"i2v trains on latents 1..F−1 (latent 0 is the conditioning image); got F = {frames}")


def _recorded_v(v_hat: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor, i2v: bool) -> torch.Tensor:
    """The velocity handed to the error banks: under I2V latent 0's prediction is replaced by its target, so the
    conditioning frame (exact at generation) records zero error instead of an untrained output."""
    if not i2v:
        return v_hat
    v = v_hat.detach().clone()
    v[:, :, :1] = (noise[:, :, :1].float() - x0[:, :, :1].float()).to(v.dtype)
    return v


def _loss_mean(per_frame: torch.Tensor, i2v: bool, valid_frames: list[int] | None = None) -> torch.Tensor:
    """Mean of the [B, F] per-frame losses over the frames that carry loss: all, or all but the I2V image, and only
    frames before each sample's `valid_frames` (a padded folder sample: the release masks frames at or past its
    num_valid_latent_frames)."""
    if valid_frames is None:
        return (per_frame[:, 1:] if i2v else per_frame).mean()
    B, F = per_frame.shape
    if len(valid_frames) != B or not all(int(i2v) < v <= F for v in valid_frames):
        raise ValueError(f"valid_frames {list(valid_frames)} must give each of the {B} samples a count in "
                         f"{int(i2v) + 1}..{F}")
    idx = torch.arange(F, device=per_frame.device)
    mask = (idx[None, :] < torch.tensor(valid_frames, device=per_frame.device)[:, None]) & (idx[None, :] >= int(i2v))
    return (per_frame * mask).sum() / mask.sum()


def _tf_attention(frames: int, tpf: int, chunk: int, attn: str, window: TFWindow | None = None) -> AttnFn:
    """The block-causal teacher-forcing mask over [clean ; noisy], as the model's attn_fn; with a `window` that the
    clip outgrows, the windowed mask (dense / Flex from the same rule, or the blocked gather)."""
    if window is not None and window.covers(frames // chunk):
        window = None  # the same mask: keep the unwindowed path bit for bit
    masked = MaskedAttention(tf_mask_mod(frames, tpf, chunk, window), 2 * frames * tpf,
                             "dense" if attn == "blocked" else attn,
                             cache_key=("natural", frames, tpf, chunk, window))
    whole = TFWindow(frames // chunk, 0)

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        if resolve_attn(attn, q.device, windowed=window is not None) == "blocked":
            return blocked_tf_attention(q, k, v, frames, tpf, chunk, window or whole)
        return masked(q, k, v)

    return fn


def teacher_forcing_loss(
    model,
    x0: torch.Tensor,
    prompts_embeds: torch.Tensor,
    frame_prompt: torch.Tensor,
    *,
    noise: torch.Tensor,
    t_index: torch.Tensor,
    attn: str = "auto",
    recycler: ErrorRecycler | None = None,
    recycle_generator: torch.Generator | None = None,
    loss_weighting: str = "wan",
    i2v: bool = False,
    valid_frames: int | None = None,
    window: TFWindow | None = None,
) -> torch.Tensor:
    """Weighted flow-matching loss of one sample under the teacher-forcing layout (deterministic given noise, t).

    x0 [1, C, F, H, W] clean latents; prompts_embeds [P, Lt, text_dim] stacked prompts; frame_prompt [F] which
    prompt each latent frame uses (constant within a block); noise like x0; t_index [F/chunk] table indices.
    Returns mean over the F noisy frames of w(t_block)·MSE_(C,H,W)(v̂ − (ε − x0)), w by `loss_weighting`.

    With an `ErrorRecycler` (`longlive.train.error_recycling`, spec 04 "Error recycling"), drawn from
    `recycle_generator` before the forward: the clean context copy becomes x0 + Δ_ctx and the noisy input
    x_t + Δ_lat (Δ_lat includes σ·Δ_ε of a noise injection); after it, every block's x̂0 − x0 and v̂ − (ε − x0)
    (x0, ε un-perturbed) are recorded, detached, at the block's timestep bucket. The target stays v = ε − x0 of
    the un-perturbed sample (recycler target "clean"), or with target "corrective" becomes (x_t + Δ_lat − x0)/σ,
    the velocity from the perturbed input to the true data. Clean steps (probability p_clean) are exactly the
    plain loss.

    With `i2v`, latent 0 is the clean conditioning image (module docstring): never noised, t = 0, no injection,
    zero recorded error, and the mean runs over latents 1..F−1.

    With a `window` (`TFWindow`, `tf_window`), each block's clean context is its inference KV window instead of the
    whole history.
    """
    frames, tpf = check_tf_shapes(model, x0, t_index, frame_prompt)
    if i2v:
        check_i2v(frames)
    chunk = model.cfg.chunk_frames
    sched = frame_schedule(t_index, chunk, loss_weighting)
    frame = condition_first_frame(sched) if i2v else sched
    dev = x0.device
    if recycler is not None and recycle_generator is None:
        raise ValueError("error recycling needs recycle_generator (seeded per step and rank) for determinism")
    ctx, x_t, target = _noised(x0, noise, sched, chunk, recycler, recycle_generator, i2v)
    seq = torch.cat([ctx, x_t], dim=2)
    t_seq = torch.cat([torch.zeros(frames), frame.t]).to(dev)[None]
    frame_prompt = torch.as_tensor(frame_prompt, device=dev).long()
    out = model(
        seq, t_seq, prompts_embeds, frame_positions=list(range(frames)) * 2,
        attn_fn=_tf_attention(frames, tpf, chunk, attn, window), frame_prompt=torch.cat([frame_prompt, frame_prompt]),
    )
    v_hat = out[:, :, frames:]
    if recycler is not None:
        recycler.record(sched.t[::chunk], x_t, _recorded_v(v_hat, noise, x0, i2v), x0, noise, frame.sigma, chunk)
    valid = None if valid_frames is None or valid_frames == frames else [valid_frames]
    return _loss_mean(weighted_frame_mse(v_hat, target, frame.weight), i2v, valid)


def batched_teacher_forcing_loss(
    model,
    x0: torch.Tensor,
    prompt_embeds: torch.Tensor,
    *,
    noise: torch.Tensor,
    t_index: torch.Tensor,
    attn: str = "auto",
    recycler: ErrorRecycler | None = None,
    recycle_generators: list[torch.Generator] | None = None,
    loss_weighting: str = "wan",
    i2v: bool = False,
    valid_frames: list[int] | None = None,
    window: TFWindow | None = None,
) -> torch.Tensor:
    """`teacher_forcing_loss` of B single-prompt samples in one forward pass: their mean.

    x0 / noise [B, C, F, H, W]; prompt_embeds [B, Lt, D], one prompt per sample (multi-prompt samples train one at a
    time); t_index [B, F/chunk]. Every sample gets its own block timesteps, noise, recycled errors (one generator
    each) and loss, so the result equals the mean of the B single-sample losses; on CPU the batch amortises the
    per-op overhead that dominates the tiny preset (about 2× the samples per second at B = 8).
    `i2v` conditions every sample on its own latent 0, as in `teacher_forcing_loss`.
    """
    if x0.dim() != 5:
        raise ValueError(f"x0 must be [B, C, F, H, W], got {tuple(x0.shape)}")
    B = x0.shape[0]
    t_index = torch.as_tensor(t_index).reshape(B, -1)
    if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != B:
        raise ValueError(f"need one prompt per sample, prompt_embeds [{B}, Lt, D]; got {tuple(prompt_embeds.shape)}")
    frames, tpf = check_tf_shapes(model, x0[:1], t_index[0], torch.zeros(x0.shape[2]))
    if i2v:
        check_i2v(frames)
    chunk = model.cfg.chunk_frames
    dev = x0.device
    if recycler is not None and (recycle_generators is None or len(recycle_generators) != B):
        raise ValueError("error recycling needs one recycle generator per sample (seeded per step, rank and sample)")
    scheds = [frame_schedule(t_index[b], chunk, loss_weighting) for b in range(B)]
    framed = [condition_first_frame(sc) if i2v else sc for sc in scheds]
    gens = recycle_generators or [None] * B
    parts = [_noised(x0[b:b + 1], noise[b:b + 1], sc, chunk, recycler, gens[b], i2v) for b, sc in enumerate(scheds)]
    ctx, x_t, target = (torch.cat([p[i] for p in parts]) for i in range(3))
    seq = torch.cat([ctx, x_t], dim=2)
    t_seq = torch.cat([torch.zeros(B, frames), torch.stack([fr.t for fr in framed])], dim=1).to(dev)
    out = model(seq, t_seq, prompt_embeds, frame_positions=list(range(frames)) * 2,
                attn_fn=_tf_attention(frames, tpf, chunk, attn, window))
    v_hat = out[:, :, frames:]
    if recycler is not None:
        for b, (sc, fr) in enumerate(zip(scheds, framed, strict=True)):
            sl = slice(b, b + 1)
            recycler.record(sc.t[::chunk], x_t[sl], _recorded_v(v_hat[sl], noise[sl], x0[sl], i2v), x0[sl], noise[sl],
                            fr.sigma, chunk)
    valid = None if valid_frames is None or all(v == frames for v in valid_frames) else list(valid_frames)
    return _loss_mean(weighted_frame_mse(v_hat, target, torch.stack([fr.weight for fr in framed])), i2v, valid)


def predicted_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x̂0 = x_t − σ·v̂ (σ per latent frame), e.g. for error recycling."""
    s = sigma.to(device=x_t.device, dtype=torch.float32).view(1, 1, -1, 1, 1)
    return (x_t.float() - s * v.float()).to(x_t.dtype)
