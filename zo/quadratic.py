"""The synthetic problem of the ConMeZO paper (§5.1, App. C.1).

f(x) = Σ σ_i x_i² with σ_i geometric from 1/d to 1: an ill-conditioned bowl on
which the value of a good search direction is easy to see. It is an ordinary
`nn.Module` so that it runs through exactly the same optimizer code as the LMs.

`Quadratics` is R such problems side by side, for bench/synthetic.py: the rows of one
parameter, which the optimizers run as R independent problems in the same kernels
(zo.optim.base.Rows), so a grid of settings × seeds is one batch, not R runs.
`NoisyQuadratics` gives their probes a minibatch objective instead (bench/synthetic.py --protocol
noise): a chosen share ρ² of the minibatch gradient's energy is the full gradient's.
"""

from __future__ import annotations

import torch
from torch import nn

from zo.fused import kernel
from zo.noise import mix, normal_at

NOISE_SALT = 0xBA7C4  # salts the minibatch noise's seeds: a stream no optimizer draws from


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

    def forward(self, minibatch: bool = False) -> torch.Tensor:
        """F(X), the (R, 1) column. minibatch: the step's f_b at the probe's X, which here is F."""
        return self.scale * (self.sigma * self.x.float() ** 2).sum(-1, keepdim=True)

    def draw(self, step: int) -> None:
        """Fix step's minibatch before its probes (none here: every probe sees F)."""


def minibatch_noise(
    x: torch.Tensor, curvature: torch.Tensor, streams: torch.Tensor, seed: int, excess: torch.Tensor
) -> torch.Tensor:
    """n_b per row of x (see `NoisyQuadratics`): A·w with the part along g = A·x removed, scaled to
    ‖n_b‖² = excess·‖g‖². curvature is A's diagonal, streams (R, 1) the rows' noise streams (w at
    flat indices stream·d + j), excess (R, 1) = 1/ρ² − 1. A row with g = 0 (or no A·w beside g)
    gets n_b = 0, and so does a row with excess 0."""
    d = x.shape[-1]
    g = curvature * x
    v = curvature * normal_at(streams * d + torch.arange(d, device=x.device), seed)
    gg = (g * g).sum(-1, keepdim=True)
    perp = v - torch.where(gg > 0, (v * g).sum(-1, keepdim=True) / gg, 0.0) * g
    pp = (perp * perp).sum(-1, keepdim=True)
    return perp * torch.where(pp > 0, (excess * gg / pp).sqrt(), 0.0)


def minibatch_term(x: torch.Tensor, noise: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """⟨n_b, x − x_t⟩ per row, one pass (eagerly: three)."""
    return (noise * (x - anchor)).sum(-1, keepdim=True)


class NoisyQuadratics(Quadratics):
    """`Quadratics` whose probes see a minibatch: at step t each row's probes evaluate

        f_b(x) = F(x) + ⟨n_b, x − x_t⟩ = ½(x − ξ_b)ᵀA(x − ξ_b) + c_b,   ξ_b = −A⁻¹n_b,

    F = ½xᵀAx the noiseless objective (A = 2·scale·diag σ), x_t the row's point when the step
    begins, c_b the constant that makes f_b(x_t) = F(x_t). Its gradient is ∇f_b(x) = ∇F(x) + n_b,
    and both probes of a step (and any others) see the same ξ_b, as two forwards on one minibatch
    would. The noise n_b is drawn from the seed, the step and the row's stream:

        w ~ N(0, I_d),   v = A·w,   n_b = k·(v − (⟨v, g⟩/‖g‖²)·g),   g = ∇F(x_t) = A·x_t,
        k ≥ 0 such that ‖n_b‖² = (1/ρ² − 1)·‖g‖².

    So n_b ⟂ g and cos²(∇f_b(x_t), ∇F(x_t)) = ‖g‖²/(‖g‖² + ‖n_b‖²) = ρ² exactly, at every step and
    for every draw (up to fp32 rounding), not only in expectation. E[n_b | x_t] = 0 (w ↦ −w flips
    n_b), so ∇f_b is an unbiased minibatch gradient. Equivalently ξ_b = −k(w − αx_t) with
    α = ⟨v, g⟩/‖g‖²: an isotropic Gaussian centre shift with the one component removed that would
    tilt ∇f_b towards or away from ∇F, so n_b has the shape of A·w (the noise of a minibatch whose
    centres are spread isotropically). Its size follows ‖∇F(x_t)‖: the ratio, not the noise, is
    fixed; real minibatch noise does not vanish at the optimum, this does.

    ρ² is one number or one per row (a column). A row with ρ² = 1 gets n_b = 0 and its f_b is F
    bitwise (F + 0); where every row has ρ² = 1 nothing is drawn at all. Rows with the same stream
    draw the same w (common random numbers across settings, methods and ρ² of one trial); their
    n_b differ with their x_t. Every `align_every` steps (1, 1 + align_every, ...; 0: never) `draw`
    keeps `alignment()` in `aligned`, the measured cos² of each row.
    """

    def __init__(
        self,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        scale: float,
        rho2: float | torch.Tensor,
        seed: int,
        streams: torch.Tensor | None = None,
        fused: bool = True,
        align_every: int = 0,
    ) -> None:
        super().__init__(x0, sigma, scale)
        rows = x0.shape[0] if x0.dim() == 2 else 1
        rho2 = torch.as_tensor(rho2, dtype=torch.float64).expand(rows).reshape(rows, 1)
        if not ((rho2 > 0) & (rho2 <= 1)).all():
            raise ValueError(f"rho2 must be in (0, 1], got {rho2.view(-1).tolist()}")
        self.rho2, self.excess = rho2, (1.0 / rho2 - 1.0).float()
        self.seed, self.fused, self.align_every = seed, fused, align_every
        self.streams = (torch.arange(rows) if streams is None else streams).view(-1, 1).to(torch.int64)
        self.noise: torch.Tensor | None = None  # n_b of this step, (R, d); None: no noise
        self.anchor: torch.Tensor | None = None  # x_t
        self.aligned: list[torch.Tensor] = []

    def draw(self, step: int) -> None:
        if not (self.excess > 0).any():
            return
        x = self.x.detach().float().view(self.streams.shape[0], -1)
        curvature = 2.0 * self.scale * self.sigma
        self.anchor = x.clone()
        seed = mix(self.seed, NOISE_SALT, step)
        self.noise = kernel(minibatch_noise, self.fused)(
            self.anchor, curvature, self.streams, seed, self.excess
        )
        if self.align_every and step % self.align_every == 1 % self.align_every:
            self.aligned.append(self.alignment())

    def forward(self, minibatch: bool = False) -> torch.Tensor:
        f = super().forward()
        if not minibatch or self.noise is None:
            return f
        term = kernel(minibatch_term, self.fused)(self.x.float().view_as(self.noise), self.noise, self.anchor)
        return f + term.view_as(f)

    def alignment(self) -> torch.Tensor:
        """cos²(∇f_b(x_t), ∇F(x_t)) of this step's draw, per row, in float64 (ρ² up to rounding)."""
        if self.noise is None or self.anchor is None:
            return torch.ones(self.streams.shape[0], dtype=torch.float64)
        g = (2.0 * self.scale * self.sigma * self.anchor).double()
        batch = g + self.noise.double()
        return (g * batch).sum(-1) ** 2 / ((g * g).sum(-1) * (batch * batch).sum(-1))
