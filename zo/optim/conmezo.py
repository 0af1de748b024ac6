"""ConMeZO (AISTATS 2026, Algorithm 1): sample z inside a cone around the momentum.

    z = √d (cos θ · m/‖m‖ + sin θ · u),   u a random unit vector
    x ← x − η p·z,   m ← β_t m + (1 − β_t) p·z,   m_0 = u_0

z is never stored: each parameter's slice is rebuilt from its momentum slice
and its seeded u slice whenever it is needed. ‖m‖ is computed exactly (the
official code estimates it), for free, while m is being written in `update`.
With `unit_u`, u = n/‖n‖ for n ~ N(0, I); ‖n‖ costs one extra generation pass
per step. Without it, u = n/√d, the paper's practical choice (‖u‖ ≈ 1).
"""

from __future__ import annotations

import math

import torch

from zo import ZOError
from zo.noise import gaussian
from zo.optim import register
from zo.optim.base import OptimConfig, ZOOptimizer


def _sq_norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t, dtype=torch.float32)) ** 2


@register
class ConMeZO(ZOOptimizer):
    name = "conmezo"
    uses_beta = True

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.cos = math.cos(cfg.theta)
        self.sin = math.sin(cfg.theta)
        self.sqrt_d = math.sqrt(self.d)
        self.u_scale = 1.0 / self.sqrt_d
        # m_0 = u_0: a random unit vector, drawn from a seed that no step uses.
        self.begin_step(-1)
        self.momentum = [
            (self.u_scale * gaussian(p.shape, self.param_seed(i), p.device)).to(self.momentum_dtype(p))
            for i, p in enumerate(self.params)
        ]
        self.m_norm = math.sqrt(sum(_sq_norm(m) for m in self.momentum))

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        if self.cfg.unit_u:  # u = n/‖n‖ needs this step's ‖n‖ before the first perturbed forward
            gaussians = (gaussian(p.shape, self.param_seed(i), p.device) for i, p in enumerate(self.params))
            self.u_scale = 1.0 / math.sqrt(sum(_sq_norm(n) for n in gaussians))

    def direction(self, i: int, p: torch.Tensor) -> torch.Tensor:
        z = gaussian(p.shape, self.param_seed(i), p.device).mul_(self.sqrt_d * self.sin * self.u_scale)
        return z.add_(self.momentum[i], alpha=self.sqrt_d * self.cos / self.m_norm)

    def update(self, lr: float, beta: float | None) -> None:
        assert beta is not None
        sq = 0.0
        for i, p in enumerate(self.params):
            g = self.direction(i, p.data).mul_(self.projected_grad)  # uses the old m and ‖m‖
            self.step_param(i, p.data, g, lr)
            self.blend(i, self.momentum[i], g, beta)
            sq += _sq_norm(self.momentum[i])
        self.m_norm = math.sqrt(sq)
        if not 0.0 < self.m_norm < math.inf:
            raise ZOError(f"momentum norm is {self.m_norm} after the update; lower optimizer.lr")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "m_norm": self.m_norm}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.m_norm = state["m_norm"]
