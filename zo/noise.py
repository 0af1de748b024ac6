"""Seeded random numbers, regenerated on demand instead of stored.

ZO methods draw a fresh direction every step and need the *same* direction three
times (perturb +, perturb -, update). Keeping it would cost a parameter-sized
buffer; regenerating it from a seed costs only compute. Each parameter gets its
own stream, derived from (step seed, parameter index), so the order in which
modules run (or re-run, for tied weights) never changes the numbers.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


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


def generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def gaussian(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal fp32 tensor, a pure function of (shape, seed, device type)."""
    return torch.randn(shape, generator=generator(seed, device), device=device, dtype=torch.float32)


def uniform(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator(seed, device), device=device, dtype=torch.float32)
