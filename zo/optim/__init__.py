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

    `cfg` is the optimizer's Config, a dict of `optimizer.*` keys, or a plain `OptimConfig`: of that,
    the shared keys it sets are kept and every other key takes the method's default. A shared key
    left at OptimConfig's default takes the method's own default where it has one (LOREN's
    queries = 10, MEAZO's β = 0.999), not the generic one.
    """
    if isinstance(cfg, dict):
        cfg = make_config(cfg)
    cls = get(cfg.name)
    if not isinstance(cfg, cls.Config):
        cfg = cls.Config(name=cfg.name, **_set_keys(cfg))
    return cls(model, cfg, seed)


def _set_keys(cfg) -> dict:
    """The fields of a config that differ from its class's defaults (a tensor value always does)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "name" and not (type(value) is type(f.default) and value == f.default):
            out[f.name] = value
    return out
