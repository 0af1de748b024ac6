"""SGD, with optional heavy-ball or Nesterov momentum, via torch.optim.SGD (doc §6):

    g ← ∇f(x) + wd·x,   b ← μ b + g (b₁ = g₁),   x ← x − η (g + μ b if nesterov else b)

Weight decay is torch.optim.SGD's: L2 added to the gradient (so it passes through the momentum),
which without momentum is the decoupled x ← (1 − η·wd) x; it skips biases and norm weights.
State: the momentum buffer b (1P) when μ > 0, none otherwise.

lr defaults to 1e-3: SGD's step scales with ‖∇f‖ (Adam's is normalised to ~η per coordinate), so
it needs a larger η than AdamW's 1e-5; it is a starting point to tune, not a value from a paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zo import ZOError
from zo.optim import register
from zo.optim.base import OptimConfig
from zo.optim.first_order import FirstOrder


@dataclass
class SGDConfig(OptimConfig):
    lr: float = 1e-3
    momentum: float = 0.0  # μ; 0 is plain SGD
    nesterov: bool = False  # step along g + μ b instead of b

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "momentum": (0.0 <= self.momentum < 1.0, "0 <= momentum < 1"),
            "nesterov": (not self.nesterov or self.momentum > 0, "true only with momentum > 0"),
        }


@register
class SGD(FirstOrder):
    name = "sgd"
    Config = SGDConfig
    momentum_key = "momentum_buffer"

    def make(self, groups: list[dict], impl: dict[str, bool]) -> torch.optim.Optimizer:
        c = self.cfg
        assert isinstance(c, SGDConfig)
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, **impl)

    def reference_vector(self, i: int) -> torch.Tensor:
        """Without momentum nothing of the previous step is kept (its gradient is freed), and the
        gradient itself would align with itself: there is nothing honest to log."""
        assert isinstance(self.cfg, SGDConfig)
        if self.cfg.momentum == 0.0:
            raise ZOError(
                "optimizer=sgd with momentum=0 keeps no direction to align with the gradient: "
                "set log.align_every=0 or optimizer.momentum>0"
            )
        return super().reference_vector(i)
