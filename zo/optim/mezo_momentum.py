"""MeZO with heavy-ball momentum, the ConMeZO paper's baseline.

Same Gaussian z as MeZO, but the step follows m ← β m + (1−β) p·z, which costs
one parameter-sized buffer.
"""

from __future__ import annotations

import torch

from zo.optim import register
from zo.optim.base import OptimConfig
from zo.optim.mezo import MeZO


@register
class MeZOMomentum(MeZO):
    name = "mezo_momentum"
    uses_beta = True

    def __init__(self, model: torch.nn.Module, cfg: OptimConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.momentum = [torch.zeros_like(p, dtype=self.momentum_dtype(p)) for p in self.params]

    def update(self, lr: float, beta: float | None) -> None:
        assert beta is not None
        for i, p in enumerate(self.params):
            self.blend(i, self.momentum[i], self.direction(i, p.data).mul_(self.projected_grad), beta)
            self.step_param(i, p.data, self.momentum[i].float(), lr)
