"""Stochastic rounding from fp32 into fp16/bf16.

With lr ~ 1e-7 most ZO updates are far below one ulp of an fp16/bf16 weight, so
round-to-nearest throws them away and the model never moves. Rounding up with
probability equal to the distance travelled keeps the *expected* update exact,
at no memory cost beyond the transient of the tensor being written.
"""

from __future__ import annotations

import torch

from zo.noise import uniform

LOW_PRECISION = (torch.float16, torch.bfloat16)


def _step_away(y: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The representable neighbour of `y` towards +inf where `up`, else towards -inf.

    On the 16-bit pattern of a sign-magnitude float, +1 grows the magnitude and -1
    shrinks it; whether growing the magnitude moves up depends on the sign.
    """
    bits = y.view(torch.int16)
    grow = up == (y > 0)
    stepped = torch.where(grow, bits + 1, bits - 1).view(y.dtype)
    tiny = torch.ones((), dtype=torch.int16, device=y.device).view(y.dtype)  # smallest subnormal
    from_zero = torch.where(up, tiny, -tiny)
    return torch.where(y == 0, from_zero, stepped)


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Round fp32 `x` to `dtype` so that E[result] == x (for x inside dtype's range)."""
    if dtype not in LOW_PRECISION:
        return x.to(dtype)
    nearest = x.to(dtype)
    near32 = nearest.float()
    residual = x - near32
    other = _step_away(nearest, residual > 0)
    gap = (other.float() - near32).abs()
    prob = torch.where(gap > 0, residual.abs() / gap, torch.zeros_like(gap))
    take_other = uniform(x.shape, seed, x.device) < prob
    return torch.where(take_other, other, nearest)


def store(dst: torch.Tensor, value: torch.Tensor, seed: int, stochastic: bool) -> None:
    """Write fp32 `value` into `dst` in place, stochastically rounded when asked and useful."""
    if stochastic and dst.dtype in LOW_PRECISION:
        dst.copy_(stochastic_round(value, dst.dtype, seed))
    else:
        dst.copy_(value)
