"""AdamW (Loshchilov & Hutter, 2019), the first-order baseline of the ConMeZO paper (doc §6):

    m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
    x ← (1 − η·wd) x − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + δ)

with g = ∇f(x) by backprop, via torch.optim.AdamW. State: m and v (2P; amsgrad keeps the running
max of v, a third P), plus the gradient during the step.

Defaults: lr 1e-5, the low end of the usual full-finetuning grid for Adam on these models (MeZO's
fine-tuning baseline searches 1e-5 to 8e-5); ten times MeZO's η because Adam's step is normalised
to ~η per coordinate. Decay is decoupled (AdamW), 0 by default, and skips biases and norm weights.
Adam's ε is `delta` because `eps` is the ZO perturbation λ that every config shares (unused here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zo.optim import register
from zo.optim.base import OptimConfig
from zo.optim.first_order import FirstOrder


@dataclass
class AdamWConfig(OptimConfig):
    lr: float = 1e-5
    beta: float = 0.9  # β₁, fixed (no warm-up schedule)
    beta2: float = 0.999  # β₂
    delta: float = 1e-8  # Adam's ε
    amsgrad: bool = False  # keep max(v) and divide by it (a third parameter-sized buffer)

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "beta2": (0.0 <= self.beta2 < 1.0, "0 <= beta2 < 1"),
            "delta": (self.delta > 0, "delta > 0 (Adam's ε)"),
        }


@register
class AdamW(FirstOrder):
    name = "adamw"
    Config = AdamWConfig
    momentum_key = "exp_avg"

    def make(self, groups: list[dict], impl: dict[str, bool]) -> torch.optim.Optimizer:
        c = self.cfg
        assert isinstance(c, AdamWConfig)
        return torch.optim.AdamW(
            groups, lr=c.lr, betas=(c.beta, c.beta2), eps=c.delta, amsgrad=c.amsgrad, **impl
        )
