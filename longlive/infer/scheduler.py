"""Flow-matching schedulers for the per-chunk denoising loop (spec 02, "Per-chunk procedure").

`FlowUniPC` is UniPC multistep (order 2, B(h) = expm1(h) "bh2", predict-x0, lower order at the final
step, final sigma 0) on the rectified-flow path x_t = (1−σ)·x0 + σ·ε, with a shift-warped sigma grid.
A fresh scheduler is made per chunk. State is float32 (the release keeps it in BF16; we measure rather than copy that
choice). `FlowEuler` is the plain first-order alternative.

Steps: any N ≥ 1, as the release's `inference.sampling_steps` (its UniPC `set_timesteps(N, shift)`): N sigmas from
linspace(0.999, 0, N+1) without the last, each warped by `timestep_shift` (the release's `timestep_shift`, 5), then a
final 0; the model sees int(1000·σ'). The release's `denoising_step_list` is the training rollout's (DMD) list of
integer timesteps, built from `sampling_steps` when a config gives none (the same warp over linspace(1, 0), so
[1000, 937, 833, 625] at 4 steps); inference never reads it.
"""

from __future__ import annotations

import math

import torch


def flow_sigmas(steps: int, timestep_shift: float = 5.0, sigma_max: float = 0.999) -> list[float]:
    """σ' = s·σ / (1 + (s−1)·σ) with s = timestep_shift over linspace(sigma_max, 0, steps+1)[:-1], then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not timestep_shift > 0:
        raise ValueError(f"timestep_shift must be > 0, got {timestep_shift}")
    base = torch.linspace(sigma_max, 0.0, steps + 1, dtype=torch.float64)[:-1]
    warped = timestep_shift * base / (1 + (timestep_shift - 1) * base)
    return [float(s) for s in warped] + [0.0]


def flow_timesteps(steps: int, timestep_shift: float = 5.0) -> list[int]:
    """The integer model timesteps int(σ'·1000) of each step: [999, 937, 833, 624] for 4 steps."""
    return [int(s * 1000) for s in flow_sigmas(steps, timestep_shift)[:-1]]


def _lambda(sigma: float) -> float:
    """log-SNR of the flow path: log(1−σ) − log(σ) (∞ at σ = 0)."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


class FlowUniPC:
    """UniPC-bh2 predictor–corrector for flow models; call step(v, x) once per timestep."""

    def __init__(self, steps: int, timestep_shift: float = 5.0, order: int = 2):
        self.sigmas = flow_sigmas(steps, timestep_shift)
        self.timesteps = [int(s * 1000) for s in self.sigmas[:-1]]
        self.order = order
        self.steps = steps
        self.index = 0
        self.x0_history: list[torch.Tensor] = []  # converted model outputs (x0 predictions), newest last
        self.last_sample: torch.Tensor | None = None
        self.last_order = 0

    def _coeffs(self, h: float, rks: list[float], order: int) -> tuple[float, float, list[float]]:
        """h_phi_1, B(h) and the right-hand side b of UniPC's order conditions (for −h, predict-x0)."""
        hh = -h
        h_phi_1 = math.expm1(hh)
        B_h = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1 if math.isfinite(hh) else -1.0
        fact = 1
        b = []
        for i in range(1, order + 1):
            b.append(h_phi_k * fact / B_h)
            fact *= i + 1
            h_phi_k = (h_phi_k / hh if math.isfinite(hh) else 0.0) - 1 / fact
        return h_phi_1, B_h, b

    def _update(
        self, x: torch.Tensor, s0: float, t: float, m0: torch.Tensor, prev: list[tuple[float, torch.Tensor]],
        order: int, corrector_x0: torch.Tensor | None,
    ) -> torch.Tensor:
        """One UniPC predictor (corrector_x0 None) or corrector update from sigma s0 to sigma t."""
        lam_t, lam_s0 = _lambda(t), _lambda(s0)
        h = lam_t - lam_s0
        rks, d1s = [], []
        for s_i, m_i in prev[: order - 1]:
            rk = (_lambda(s_i) - lam_s0) / h
            rks.append(rk)
            d1s.append((m_i - m0) / rk)
        rks.append(1.0)
        h_phi_1, B_h, b = self._coeffs(h, rks, order)
        alpha_t = 1.0 - t
        x_t = (t / s0) * x - alpha_t * h_phi_1 * m0
        if corrector_x0 is None:  # predictor
            if d1s:  # order 2: rho = 0.5
                x_t = x_t - alpha_t * B_h * 0.5 * d1s[0]
            return x_t
        if order == 1:
            rhos = [0.5]
        else:
            R = torch.tensor([[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)], dtype=torch.float64)
            rhos = torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()
        corr = sum((r * d for r, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x))
        return x_t - alpha_t * B_h * (corr + rhos[-1] * (corrector_x0 - m0))

    def step(self, v: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance x (at step `index`) given the model's flow v; return (next x, this step's x0)."""
        i = self.index
        sigma = self.sigmas[i]
        x = x.float()
        x0 = x - sigma * v.float()
        if i > 0 and self.last_sample is not None:  # corrector on the sample we were just given
            prev = [(self.sigmas[i - 2 - j], m) for j, m in enumerate(reversed(self.x0_history[:-1]))]
            x = self._update(
                self.last_sample, self.sigmas[i - 1], sigma, self.x0_history[-1], prev, self.last_order, x0
            )
        self.x0_history = (self.x0_history + [x0])[-self.order :]
        this_order = min(self.order, self.steps - i, len(self.x0_history))
        self.last_sample = x
        prev = [(self.sigmas[i - 1 - j], m) for j, m in enumerate(reversed(self.x0_history[:-1]))]
        x_next = self._update(x, sigma, self.sigmas[i + 1], x0, prev, this_order, None)
        self.last_order = this_order
        self.index += 1
        return x_next, x0


class FlowEuler:
    """First-order Euler on the flow ODE over the same sigma grid: x ← x + (σ_next − σ)·v."""

    def __init__(self, steps: int, timestep_shift: float = 5.0):
        self.sigmas = flow_sigmas(steps, timestep_shift)
        self.timesteps = [int(s * 1000) for s in self.sigmas[:-1]]
        self.index = 0

    def step(self, v: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, s_next = self.sigmas[self.index], self.sigmas[self.index + 1]
        x0 = x.float() - s * v.float()
        self.index += 1
        return x.float() + (s_next - s) * v.float(), x0


SCHEDULERS = {"unipc": FlowUniPC, "euler": FlowEuler}


def make_scheduler(name: str, steps: int, timestep_shift: float = 5.0):
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](steps, timestep_shift)
