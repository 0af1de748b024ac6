"""Optimizer registry: each optimizer lives in its own module and registers itself by name."""

from __future__ import annotations

import importlib

from torch import nn

from zo import ZOError

REGISTRY: dict[str, type] = {}
_MODULES = ("mezo", "mezo_momentum", "conmezo")


def register(cls: type) -> type:
    REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"zo.optim.{module}")


def build(model: nn.Module, cfg, seed: int):
    """Instantiate the optimizer named `cfg.name` over `model`'s trainable parameters."""
    _load_all()
    if cfg.name not in REGISTRY:
        raise ZOError(f"unknown optimizer '{cfg.name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[cfg.name](model, cfg, seed)
