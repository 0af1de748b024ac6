"""Stochastic rounding from fp32 into fp16/bf16, as plain tensor arithmetic.

With lr ~ 1e-7 most ZO updates are far below one ulp of an fp16/bf16 weight, so
round-to-nearest throws them away and the model never moves. Rounding to the
other neighbour with probability equal to the distance travelled keeps the
*expected* update exact, at no memory cost. The neighbour's distance is read
from the fp32 bit pattern (integer ops only), so the same code runs eagerly and
inside a fused torch.compile kernel, where it needs no extra pass.
"""

from __future__ import annotations

import torch

from zo.noise import uniform_at

# dtype -> (explicit mantissa bits, spacing of its subnormals)
_FORMATS = {torch.float16: (10, 2.0**-24), torch.bfloat16: (7, 2.0**-133)}


def _gap(y: torch.Tensor, toward_zero: torch.Tensor, mantissa: int, tiny: float) -> torch.Tensor:
    """Distance from y (a value of the low-precision format, held in fp32) to its next neighbour.

    The spacing of a binade [2^e, 2^(e+1)) is 2^(e − mantissa), never below the
    subnormal spacing; moving towards zero from 2^e itself enters the binade below.
    """
    bits = y.view(torch.int32)
    exponent = (bits >> 23) & 0xFF  # biased fp32 exponent: y = 1.f · 2^(exponent − 127)
    power_of_two = (bits & 0x7FFFFF) == 0
    exponent = exponent - (toward_zero & power_of_two).to(torch.int32)
    biased = exponent - mantissa  # the fp32 exponent field of 2^(e − mantissa)
    normal = (biased.clamp_min(1) << 23).view(torch.float32)
    # bf16 spacings below 2^-126 are fp32 subnormals: bit k of the mantissa is 2^(k − 149)
    subnormal = (torch.ones_like(biased) << (biased + 22).clamp(0, 22)).view(torch.float32)
    return torch.where(biased > 0, normal, subnormal).clamp_min(tiny)


def round_to(
    value: torch.Tensor, dtype: torch.dtype, idx: torch.Tensor, seed: int, stochastic: bool
) -> torch.Tensor:
    """fp32 `value` in `dtype`; with `stochastic`, E[result] == value (inside dtype's range).

    The uniform draw at each element is a function of (seed, idx), like every other
    random number in a step.
    """
    if not stochastic or dtype not in _FORMATS:
        return value.to(dtype)
    mantissa, tiny = _FORMATS[dtype]
    y = value.to(dtype).float()
    residual = value - y
    toward_zero = (residual * y) < 0
    gap = _gap(y, toward_zero, mantissa, tiny)
    other = y + torch.where(residual > 0, gap, -gap)
    take_other = uniform_at(idx, seed) * gap < residual.abs()
    return torch.where(take_other, other, y).to(dtype)
