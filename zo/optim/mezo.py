"""MeZO (Malladi et al., 2023): z ~ N(0, I) regenerated from the step seed, no state at all."""

from __future__ import annotations

import torch

from zo.noise import normal_at, positions
from zo.optim import register
from zo.optim.base import ZOOptimizer
from zo.rounding import round_to


def mezo_step(
    x: torch.Tensor, start: int, seed: int, round_seed: int, decay: float, step: float, sr: bool
) -> None:
    """x ← decay·x − step·z with z redrawn in place (step = η·p): one pass over x."""
    idx = positions(start, x.numel(), x.device)
    new = decay * x.float() - step * normal_at(idx, seed)
    x.copy_(round_to(new, x.dtype, idx, round_seed, sr))


@register
class MeZO(ZOOptimizer):
    """x ← x − η (p·z + wd·x); inference memory only."""

    name = "mezo"

    def update(self, lr: float, beta: float | None) -> None:
        step, move = self.kernel(mezo_step), lr * self.projected_grad
        for x, _, start, decay in self.slices(lr):
            step(x, start, self.step_seed, self.round_seed(1), decay, move, self.cfg.stochastic_rounding)
