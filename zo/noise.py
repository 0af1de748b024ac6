"""Counter-based random numbers: element j of a step's stream is a pure function of (seed, j).

ZO methods draw a fresh direction every step and need the *same* direction three
times (perturb +, perturb −, update). Storing it costs a parameter-sized buffer;
regenerating it costs only compute. A stateful generator (torch.Generator) can
only replay a stream from its start, one tensor at a time. Hashing the element's
index into the model's flat parameter vector instead lets any slice be rebuilt on
its own, in any order, on any device, and lets the draw fuse into the kernel that
consumes it: under torch.compile these functions become part of one pass over the
weights (C++/OpenMP on CPU, Triton on CUDA) and no z is ever materialised. The
same integer arithmetic runs eagerly, so the fused and the plain paths give the
same numbers up to float rounding.

A direction's entries are Gaussian (`normal_at`) or Rademacher (`rademacher_at`, ±1 from one bit of
the same hash); `noise_at(optimizer.noise)` picks the draw, with the same call shape, so a kernel
that takes the kind as an argument compiles into one loop either way.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from zo import ZOError

_MASK64 = (1 << 64) - 1
EAGER_PIECE = 1 << 20  # op by op (not compiled), draws go in pieces of this many indices


def _signed(v: int) -> int:
    """A 64-bit constant as the int64 torch stores it."""
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def mix(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64), so nearby inputs give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & _MASK64)) & _MASK64
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x & ((1 << 63) - 1)


def positions(start: int, n: int, device: torch.device) -> torch.Tensor:
    """Flat indices start .. start+n-1 (int64: models have more than 2³¹ weights)."""
    return torch.arange(start, start + n, dtype=torch.int64, device=device)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _hash(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 of (seed + idx·golden): 64 well-mixed bits per index (int64 arithmetic wraps)."""
    x = idx * _GOLDEN + seed
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


def _unit24(bits: torch.Tensor) -> torch.Tensor:
    """24 random bits as an fp32 in [0, 1), exactly. Narrowing to int32 first matters on CPU:
    AVX2 has no int64→float instruction, and that conversion alone doubled the cost of a draw."""
    return bits.to(torch.int32).float() * 2.0**-24


def _in_pieces(
    draw: Callable[[torch.Tensor, int], torch.Tensor],
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Run op by op, every step of the hash materialises an int64 tensor as large as idx: whole,
    a draw would hold ~40 bytes per weight at once. In pieces it holds a piece's worth. Compiled,
    the draw is one fused loop that materialises nothing, so it runs whole."""

    @functools.wraps(draw)
    def pieces(idx: torch.Tensor, seed: int) -> torch.Tensor:
        if torch.compiler.is_compiling() or idx.numel() <= EAGER_PIECE:
            return draw(idx, seed)
        out = torch.empty(idx.shape, dtype=torch.float32, device=idx.device)
        flat_idx, flat_out = idx.reshape(-1), out.view(-1)
        for a in range(0, flat_idx.numel(), EAGER_PIECE):
            flat_out[a : a + EAGER_PIECE] = draw(flat_idx[a : a + EAGER_PIECE], seed)
        return out

    return pieces


@_in_pieces
def normal_at(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal fp32 at each index (Box–Muller on two 24-bit halves of the hash).

    u1 ≥ 2⁻²⁵ caps |z| at 5.9σ; the mass beyond is 4·10⁻⁹.
    """
    bits = _hash(idx, seed)
    u1 = _unit24(_shr(bits, 40)) + 2.0**-25  # in (0, 1): log stays finite
    u2 = _unit24(bits & 0xFFFFFF)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


@_in_pieces
def uniform_at(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform fp32 in [0, 1) at each index (24 bits: exactly representable)."""
    return _unit24(_shr(_hash(idx, seed), 40))


@_in_pieces
def rademacher_at(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """±1 fp32 at each index, each with probability ½: the top bit of the hash (the int64's sign).

    ‖n‖² = d exactly, so n/√d is a unit vector with no norm to compute."""
    return 1.0 - 2.0 * (_hash(idx, seed) < 0).float()


NOISES = ("gaussian", "rademacher")  # the values of optimizer.noise


def noise_at(kind: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The draw that `optimizer.noise` names, `(idx, seed) -> fp32`: `normal_at` or `rademacher_at`.

    Looked up at call time (not bound once), so a test that swaps `normal_at` here swaps every kernel's."""
    if kind == "gaussian":
        return normal_at
    if kind == "rademacher":
        return rademacher_at
    raise ZOError(f"optimizer.noise={kind} is not a noise: one of {', '.join(NOISES)}")
