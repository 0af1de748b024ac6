"""The synthetic problem of the ConMeZO paper (§5.1, App. C.1).

f(x) = Σ σ_i x_i² with σ_i geometric from 1/d to 1: an ill-conditioned bowl on
which the value of a good search direction is easy to see. It is an ordinary
`nn.Module` so that it runs through exactly the same optimizer code as the LMs.

`Quadratics` is R such problems side by side, for bench/synthetic.py: the rows of one
parameter, which the optimizers run as R independent problems in the same kernels
(zo.optim.base.Rows), so a grid of settings × seeds is one batch, not R runs.
"""

from __future__ import annotations

import torch
from torch import nn


def spectrum(d: int, kappa: float) -> torch.Tensor:
    """d eigenvalues geometric from 1/κ to 1 (condition number κ), fp32."""
    return torch.logspace(-torch.log10(torch.tensor(float(kappa))).item(), 0.0, d)


def start_point(d: int, norm: float, seed: int) -> torch.Tensor:
    """A random x₀ ∈ R^d of the given norm, a function of seed."""
    x0 = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return x0 * (norm / x0.norm())


class Quadratic(nn.Module):
    def __init__(self, d: int = 1000, init_norm: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("sigma", spectrum(d, d))
        self.x = nn.Parameter(start_point(d, init_norm, seed))

    def forward(self) -> torch.Tensor:
        return (self.sigma * self.x.float() ** 2).sum()


class Quadratics(nn.Module):
    """R quadratics f_r(x) = scale·Σ_i σ_i x_i², one per row of the parameter X ∈ R^{R×d}.

    The forward gives the (R, 1) column of f_r(X_r), the shape every per-row number takes in the
    optimizer. `zo_rows` is what tells the optimizer to treat the rows as separate problems (√d,
    ‖m‖ and the step's scalars per row); without it they would be one problem of dimension R·d.
    A 1-D x₀ is one problem with a vector parameter (f of shape (1,)), for optimizers that cannot
    run rows. scale = ½ is f = ½xᵀAx with A = diag(σ) (the ConMeZO authors' code).
    """

    def __init__(self, x0: torch.Tensor, sigma: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("sigma", sigma)
        self.x = nn.Parameter(x0.clone())
        self.scale = scale
        self.zo_rows = x0.shape[0] if x0.dim() == 2 else 1  # a 1-D x₀ is one problem

    def forward(self) -> torch.Tensor:
        return self.scale * (self.sigma * self.x.float() ** 2).sum(-1, keepdim=True)
