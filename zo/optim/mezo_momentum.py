"""MeZO with heavy-ball momentum, the ConMeZO paper's baseline.

Same z as MeZO (Gaussian, or Rademacher with optimizer.noise), but the step follows
m ← β m + (1−β) p·z, which costs one parameter-sized buffer.
"""

from __future__ import annotations

import torch

from zo.noise import noise_at
from zo.optim import register
from zo.optim.base import OptimConfig, index_of
from zo.optim.mezo import MeZO
from zo.rounding import round_to


def momentum_step(
    x: torch.Tensor,
    m: torch.Tensor,
    start: int,
    seeds: tuple[int, int, int],
    noise: str,
    decay: float,
    proj: float,
    lr: float,
    beta: float,
    sr: bool,
) -> None:
    """m ← β m + (1−β) p·z, then x ← decay·x − η m, in one pass (seeds: noise, x rounding, m rounding)."""
    idx = index_of(x, start)
    m_new = beta * m.float() + (1.0 - beta) * proj * noise_at(noise)(idx, seeds[0])
    x.copy_(round_to(decay * x.float() - lr * m_new, x.dtype, idx, seeds[1], sr))
    m.copy_(round_to(m_new, m.dtype, idx, seeds[2], sr))


@register
class MeZOMomentum(MeZO):
    name = "mezo_momentum"
    uses_beta = True
    supports_rows = True

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.momentum = self.new_momentum()

    def update(self, lr: float, beta: float | None) -> None:
        assert beta is not None
        seeds = (self.step_seed, self.round_seed(1), self.round_seed(2))
        step, noise, sr = self.kernel(momentum_step), self.draw, self.cfg.stochastic_rounding
        for x, m, start, decay in self.slices(lr):
            step(x, m, start, seeds, noise, decay, self.projected_grad, lr, beta, sr)
