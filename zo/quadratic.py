"""The synthetic problem of the ConMeZO paper (§5.1, App. C.1).

f(x) = Σ σ_i x_i² with σ_i geometric from 1/d to 1: an ill-conditioned bowl on
which the value of a good search direction is easy to see. It is an ordinary
`nn.Module` so that it runs through exactly the same optimizer code as the LMs.
"""

from __future__ import annotations

import torch
from torch import nn


class Quadratic(nn.Module):
    def __init__(self, d: int = 1000, init_norm: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("sigma", torch.logspace(-torch.log10(torch.tensor(float(d))).item(), 0.0, d))
        x0 = torch.randn(d, generator=torch.Generator().manual_seed(seed))
        self.x = nn.Parameter(x0 * (init_norm / x0.norm()))

    def forward(self) -> torch.Tensor:
        return (self.sigma * self.x.float() ** 2).sum()
