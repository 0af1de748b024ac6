"""Optimizer registry: each optimizer lives in its own module of this package and registers itself
by name; every module here but `base` is imported on first use, so adding a method is adding a file."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import cache

from torch import nn

from zo import ZOError

REGISTRY: dict[str, type] = {}
_PLUMBING = {"base"}  # modules that define no optimizer


def register(cls: type) -> type:
    REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    _load_all()
    return sorted(REGISTRY)


@cache
def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _PLUMBING:
            importlib.import_module(f"{__name__}.{info.name}")


def get(name: str) -> type:
    _load_all()
    if name not in REGISTRY:
        raise ZOError(f"unknown optimizer '{name}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_config(values: dict):
    """The optimizer's own Config from the `optimizer.*` keys; a key it does not know is an error."""
    cls = get(values.get("name", ""))
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ZOError(
            f"optimizer.{unknown[0]} is not a key of optimizer {cls.name}; "
            f"its keys: {', '.join(sorted(known))}"
        )
    return cls.Config(**values)


def build(model: nn.Module, cfg, seed: int):
    """Instantiate the optimizer named `cfg.name` over `model`'s trainable parameters.

    `cfg` is the optimizer's Config, a dict of `optimizer.*` keys, or a plain `OptimConfig`
    (its shared keys are kept, the method's own keys take their defaults).
    """
    if isinstance(cfg, dict):
        cfg = make_config(cfg)
    cls = get(cfg.name)
    if not isinstance(cfg, cls.Config):
        cfg = cls.Config(**dataclasses.asdict(cfg))
    return cls(model, cfg, seed)
