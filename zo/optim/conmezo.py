"""ConMeZO (AISTATS 2026, Algorithm 1): sample z inside a cone around the momentum.

    z = √d (cos θ · m/‖m‖ + sin θ · u),   u a random unit vector
    x ← x − η p·z,   m ← β_t m + (1 − β_t) p·z,   m_0 = u_0

z is never stored: any slice of it is a·n + c·m, rebuilt from the seeded noise n
and the momentum slice whenever needed (a = √d sin θ/‖n‖, c = √d cos θ/‖m‖).
‖m‖ is computed exactly (the official code estimates it) by a read-only pass over
the stored m after each update. With `unit_u`, u = n/‖n‖ and ‖n‖ costs one extra pass that
only draws noise (no memory traffic) per step. Without it, u = n/√d, the paper's
practical choice (‖u‖ ≈ 1). With `optimizer.noise=rademacher` n is ±1, so ‖n‖² = d exactly:
u = n/√d is exactly unit under either setting, and the extra pass is skipped.
"""

from __future__ import annotations

import math

import torch

from zo.noise import noise_at
from zo.optim import register
from zo.optim.base import OptimConfig, ZOOptimizer, index_of
from zo.rounding import round_to


def conmezo_step(
    x: torch.Tensor,
    m: torch.Tensor,
    start: int,
    seeds: tuple[int, int, int],
    noise: str,
    coef: tuple[float, float],
    decay: float,
    proj: float,
    lr: float,
    beta: float,
    sr: bool,
) -> None:
    """x ← decay·x − η p z, m ← β m + (1−β) p z with z = a·n + c·m_old, in one pass."""
    idx = index_of(x, start)
    m_old = m.float()
    g = proj * (coef[0] * noise_at(noise)(idx, seeds[0]) + coef[1] * m_old)
    x.copy_(round_to(decay * x.float() - lr * g, x.dtype, idx, seeds[1], sr))
    m.copy_(round_to(beta * m_old + (1.0 - beta) * g, m.dtype, idx, seeds[2], sr))


def sum_sq(m: torch.Tensor) -> torch.Tensor:
    """Σ m² of what was stored (per row, for rows). A pass of its own: folded into `conmezo_step`,
    inductor (CPU) stages the new x in a full-size temporary and copies it back, which costs more
    memory and time."""
    return m.float().square().sum(-1, keepdim=True)


def noise_sq(like: torch.Tensor, start: int, seed: int, noise: str) -> torch.Tensor:
    """Σ n² over this stretch of the step's noise (per row; `like` gives only its shape and device)."""
    return noise_at(noise)(index_of(like, start), seed).square().sum(-1, keepdim=True)


def fill_noise(
    m: torch.Tensor, start: int, seed: int, noise: str, scale: float, round_seed: int, sr: bool
) -> None:
    """m ← scale·n."""
    idx = index_of(m, start)
    m.copy_(round_to(scale * noise_at(noise)(idx, seed), m.dtype, idx, round_seed, sr))


@register
class ConMeZO(ZOOptimizer):
    name = "conmezo"
    uses_beta = True
    supports_rows = True

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.cos, self.sin = self.rows.angle(cfg.theta)
        self.sqrt_d = math.sqrt(self.rows.d)
        self.u_scale = 1.0 / self.sqrt_d
        # m_0 = u_0: a random unit vector, drawn from a seed that no step uses.
        self.begin_step(-1)
        self.momentum = self.new_momentum()
        fill, sr, seed = self.kernel(fill_noise), cfg.stochastic_rounding, self.step_seed
        for buffer, m in zip(self.flat.buffers, self.momentum, strict=True):
            fill(self.rows.view(m), buffer.offset, seed, self.draw, self.u_scale, self.round_seed(2), sr)
        self.m_norm = self._momentum_norm()

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        # u = n/‖n‖ needs this step's ‖n‖ before the first perturbed forward; a Rademacher n has ‖n‖ = √d.
        if self.cfg.unit_u and self.cfg.noise != "rademacher":
            norm_sq, seed, noise = self.kernel(noise_sq), self.step_seed, self.draw
            parts = (norm_sq(self.rows.view(b.data), b.offset, seed, noise) for b in self.flat.buffers)
            total = self.rows.total(parts)
            self.u_scale = 1.0 / self.rows.norm(total)  # one host sync, not one per buffer

    def coefficients(self) -> tuple[float, float]:
        return self.sqrt_d * self.sin * self.u_scale, self.sqrt_d * self.cos / self.m_norm

    def update(self, lr: float, beta: float | None) -> None:
        assert beta is not None
        seeds = (self.step_seed, self.round_seed(1), self.round_seed(2))
        coef = self.coefficients()  # the old m and ‖m‖: z must be the one the forwards saw
        step, noise, sr = self.kernel(conmezo_step), self.draw, self.cfg.stochastic_rounding
        for x, m, start, decay in self.slices(lr):
            step(x, m, start, seeds, noise, coef, decay, self.projected_grad, lr, beta, sr)
        self.m_norm = self._momentum_norm()
        self.rows.require(
            (self.m_norm > 0.0) & (self.m_norm < math.inf),
            lambda: f"momentum norm is {self.m_norm} after the update; lower optimizer.lr",
        )

    def _momentum_norm(self) -> float:
        """‖m‖ exactly (per row, for rows), over all buffers, with one host sync."""
        assert self.momentum is not None
        norm_sq = self.kernel(sum_sq)
        return self.rows.norm(self.rows.total(norm_sq(self.rows.view(m)) for m in self.momentum))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "m_norm": self.m_norm}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.m_norm = state["m_norm"]
