"""MeZO (Malladi et al., 2023): z ~ N(0, I) regenerated from the step seed, no state at all."""

from __future__ import annotations

import torch

from zo.noise import gaussian
from zo.optim import register
from zo.optim.base import ZOOptimizer


@register
class MeZO(ZOOptimizer):
    """x ← x − η (p·z + wd·x); inference memory only."""

    name = "mezo"

    def direction(self, i: int, p: torch.Tensor) -> torch.Tensor:
        return gaussian(p.shape, self.param_seed(i), p.device)

    def update(self, lr: float, beta: float | None) -> None:
        for i, p in enumerate(self.params):
            self.step_param(i, p.data, self.direction(i, p.data).mul_(self.projected_grad), lr)
