"""3-D rotary position embedding of the Wan DiT (spec 01, "RoPE").

head_dim is split into three per-axis tables (time, height, width) of adjacent interleaved channel pairs.
For head_dim 128 that is 22 / 21 / 21 pairs. Tables are built in float64 (as the published model does)
and applied in float32; keys are rotated once, at their absolute positions, before they enter the cache.

The published time table has 1024 rows (about 170 s of 5B video). A position past it grows the table: row p of
any table is the same float64 product p·θ^(−2i/d), so a grown table equals a longer one bit for bit and positions
below 1024 are untouched (spec 02, "Length beyond the RoPE table").
"""

from __future__ import annotations

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of complex pairs for (time, height, width): 22/21/21 for head_dim 128."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    return t // 2, hw // 2, hw // 2


def _axis_angles(max_positions: int, axis_dim: int, theta: float) -> torch.Tensor:
    """Angles [max_positions, axis_dim/2] with frequencies theta^(-2i/axis_dim), computed in float64."""
    inv = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    return torch.outer(torch.arange(max_positions, dtype=torch.float64), inv)


class Rope3D:
    """Per-axis angle tables and the cos/sin for a (frames × height × width) token grid.

    max_positions is the published table length (1024); the time table grows past it on demand (module docstring),
    the height/width tables do not (a latent grid wider than 1024 patches is an error).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_positions: int = 1024):
        pt, ph, pw = axis_pairs(head_dim)
        self.pairs = (pt, ph, pw)
        self.theta = theta
        self.max_positions = max_positions
        self.tables = (
            _axis_angles(max_positions, 2 * pt, theta),
            _axis_angles(max_positions, 2 * ph, theta),
            _axis_angles(max_positions, 2 * pw, theta),
        )
        self._device_tables: dict[str, tuple[torch.Tensor, ...]] = {}
        self._memo: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cover(self, end: int) -> None:
        """Grow the time table (doubling) so that positions < end have rows; device copies are rebuilt lazily."""
        n = self.tables[0].shape[0]
        if end <= n:
            return
        while n < end:
            n *= 2
        self.tables = (_axis_angles(n, 2 * self.pairs[0], self.theta), *self.tables[1:])
        self._device_tables.clear()

    def cos_sin(
        self, frame_start: int, frames: int, height: int, width: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [frames·height·width, head_dim/2] (float32) for tokens in (f, h, w) order.

        Built on the target device (no host→device copy, so no sync in the chunk loop) and memoised for the
        last few grids, since every step of a chunk reuses the same positions.
        """
        if frame_start < 0:
            raise ValueError(f"temporal RoPE positions start at 0, got {frame_start}")
        if height > self.max_positions or width > self.max_positions:
            raise ValueError(f"token grid {height}×{width} exceeds the RoPE table of {self.max_positions}")
        device = torch.device(device or "cpu")
        key = (frame_start, frames, height, width, str(device))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        self._cover(frame_start + frames)
        dev_key = str(device)
        if dev_key not in self._device_tables:
            self._device_tables[dev_key] = tuple(t.to(device) for t in self.tables)
        tt, th, tw = self._device_tables[dev_key]
        ang_t = tt[frame_start : frame_start + frames][:, None, None, :].expand(frames, height, width, -1)
        ang_h = th[:height][None, :, None, :].expand(frames, height, width, -1)
        ang_w = tw[:width][None, None, :, :].expand(frames, height, width, -1)
        ang = torch.cat([ang_t, ang_h, ang_w], dim=-1).reshape(frames * height * width, -1)
        return self._remember(key, (ang.cos().float(), ang.sin().float()))

    def cos_sin_positions(
        self, positions: list[int], height: int, width: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for frames at arbitrary temporal positions (one entry per latent frame), (f, h, w) order.

        Built from runs of consecutive positions (a KV-cache window is one run per chunk slot), each one `cos_sin`
        call, so the values equal `cos_sin` bit for bit; memoised like it.
        """
        runs = [[positions[0], 1]]
        for p in positions[1:]:
            if p == runs[-1][0] + runs[-1][1]:
                runs[-1][1] += 1
            else:
                runs.append([p, 1])
        if len(runs) == 1:
            return self.cos_sin(positions[0], len(positions), height, width, device)
        key = (tuple(positions), height, width, str(torch.device(device or "cpu")))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        parts = [self.cos_sin(p, n, height, width, device) for p, n in runs]
        return self._remember(key, (torch.cat([c for c, _ in parts]), torch.cat([s for _, s in parts])))

    def _remember(self, key: tuple, value: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the last 8 results: a chunk's steps reuse one grid, and memory stays bounded however long the video."""
        if len(self._memo) >= 8:
            self._memo.pop(next(iter(self._memo)))
        self._memo[key] = value
        return value


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2d, 2d+1) of x [B, L, H, D] by angles given as cos/sin [L, D/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)
