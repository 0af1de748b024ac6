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
the same hash); `noise_at(draw)` picks the draw, with the same call shape, so a kernel that takes the
draw's name as an argument compiles into one loop either way.

The Gaussian draw has versions: a run keeps drawing what it started with, so that its trajectory log
replays and its checkpoint resumes bitwise. Version 2 (`normal_at`, what new runs draw) costs a quarter
less than version 1 (`normal_v1_at`, the draw of every run logged before `noise_version` was recorded) on
CPU, with the same distribution (bench/draw.py). The trajectory header and the checkpoint record the
version (`NOISE_VERSION`); a header without one is version 1 (`version_of`). The name a kernel takes
(`draw_name`) is the noise kind, with `@1` appended for a version-1 Gaussian.
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
def normal_v1_at(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal fp32 at each index, draw version 1 (Box–Muller on two 24-bit halves of the hash).

    u1 ≥ 2⁻²⁵ caps |z| at 5.9σ; the mass beyond is 4·10⁻⁹.
    """
    bits = _hash(idx, seed)
    u1 = _unit24(_shr(bits, 40)) + 2.0**-25  # in (0, 1): log stays finite
    u2 = _unit24(bits & 0xFFFFFF)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
# cos(π/2·v) = Σ_k (−1)^k (π/2)^{2k} v^{2k} / (2k)!: on v ∈ [0, 1] the first 7 terms leave < 7·10⁻⁹.
_COS_QUARTER = tuple((-1) ** k * (math.pi / 2) ** (2 * k) / math.factorial(2 * k) for k in range(7))


def _log_unit(u: torch.Tensor) -> torch.Tensor:
    """ln u for fp32 u in (0, 1], within 2 ulp, from basic arithmetic (what any backend fuses).

    u = f·2^e with f ∈ [√½, √2) read from the float's bits; ln f = 2 atanh(s), s = (f−1)/(f+1), |s| <
    0.172, whose series to s⁹ leaves < 10⁻⁹. Compiled on CPU it costs less than torch.log (Sleef's
    1-ulp logf there)."""
    b = u.view(torch.int32)
    e = (b >> 23) - 127
    f = ((b & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # the mantissa as a float in [1, 2)
    high = f > _SQRT2
    f = torch.where(high, 0.5 * f, f)
    e = e + high.to(torch.int32)
    s = (f - 1.0) / (f + 1.0)
    w = s * s
    series = 1.0 + w * (1.0 / 3.0 + w * (1.0 / 5.0 + w * (1.0 / 7.0 + w * (1.0 / 9.0))))
    return e.float() * _LN2 + 2.0 * s * series


def _cos_quarter(v: torch.Tensor) -> torch.Tensor:
    """cos(π/2·v) for v in [0, 1]: its Taylor series in v², 7 terms (no range reduction to do)."""
    t = v * v
    c = _COS_QUARTER[-1] * t + _COS_QUARTER[-2]
    for a in reversed(_COS_QUARTER[:-2]):
        c = c * t + a
    return c


@_in_pieces
def normal_at(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal fp32 at each index, draw version 2 (what new runs draw): Box–Muller again.

    The radius √(−2 ln u1) comes from the hash's top 24 bits exactly as in version 1. The angle's
    cosine is a random sign (bit 24) times cos(π/2·v), v from the low 24 bits: for θ uniform on
    [0, 2π), |cos θ| is distributed as cos φ for φ uniform on [0, π/2) and its sign is independent
    of it, so this is Box–Muller's N(0, 1) exactly (|z| capped at 5.9σ as before). What changes is
    the arithmetic: with the angle in a quarter wave there is no range reduction, and ln and cos are
    short series (`_log_unit`, `_cos_quarter`) instead of the library's: 0.75× version 1's CPU time
    compiled on CPU (bench/draw.py), within 10⁻⁶ of the formula in float64.
    """
    bits = _hash(idx, seed)
    top = _shr(bits, 40).to(torch.int32)  # 24 bits: the radius
    low = (bits & 0x1FFFFFF).to(torch.int32)  # 25 bits: the sign (bit 24) and the angle
    u1 = top.float() * 2.0**-24 + 2.0**-25  # in (0, 1], as in version 1
    v = (low & 0xFFFFFF).float() * 2.0**-24
    sign = 1.0 - 2.0 * (low >> 24).float()
    return sign * torch.sqrt(-2.0 * _log_unit(u1)) * _cos_quarter(v)


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
NOISE_VERSION = 2  # the Gaussian draw new runs use (normal_at); version 1 is normal_v1_at
NOISE_VERSIONS = (1, 2)


def version_of(header: dict) -> int:
    """The noise version a trajectory log's or checkpoint's header records; one written before the
    version was recorded (no `noise_version`) drew version 1."""
    return header.get("noise_version", 1)


def draw_name(kind: str, version: int) -> str:
    """What the kernels take as their `noise` argument: the kind, and `gaussian@1` for a version-1
    Gaussian (a Rademacher draw is the same in every version)."""
    return f"{kind}@{version}" if kind == "gaussian" and version != NOISE_VERSION else kind


def noise_at(draw: str) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The draw a `draw_name` names, `(idx, seed) -> fp32`: `normal_at`, `normal_v1_at` or
    `rademacher_at`; an `optimizer.noise` value names the current version's.

    Looked up at call time (not bound once), so a test that swaps `normal_at` here swaps every kernel's."""
    if draw == "gaussian":
        return normal_at
    if draw == "gaussian@1":
        return normal_v1_at
    if draw == "rademacher":
        return rademacher_at
    raise ZOError(f"optimizer.noise={draw} is not a noise: one of {', '.join(NOISES)}")
