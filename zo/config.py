"""Check the composed config before any model or data loads.

A sweep that dies an hour in because θ was typed in degrees wastes a GPU hour;
a one-line error at start-up costs nothing. Every check names the key and the
values it accepts.
"""

from __future__ import annotations

import dataclasses
import typing

from omegaconf import DictConfig, OmegaConf

from zo import ZOError
from zo.models import KINDS, ModelConfig
from zo.optim import make_config
from zo.optim import names as optimizer_names
from zo.optim.base import DTYPES, OptimConfig


class ConfigError(ValueError):
    """A config value is out of range; exit code 2."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: allowed {allowed}")


def validate(cfg: DictConfig) -> None:
    from data import TASKS

    t, tr = cfg.train, cfg.task
    o = optim_config(cfg)
    for key, (ok, allowed) in o.checks().items():
        _check(ok, f"optimizer.{key}", getattr(o, key), allowed)
    _check(t.steps >= 0, "train.steps", t.steps, "steps >= 0")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "batch_size >= 1")
    _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "eval_every >= 0 (0 = only at start and end)")
    _check(t.eval_samples >= 1, "train.eval_samples", t.eval_samples, "eval_samples >= 1")
    _check(t.dev_samples >= 0, "train.dev_samples", t.dev_samples, "dev_samples >= 0 (0 = no dev evaluation)")
    losses = ("auto", "classification", "lm")
    _check(tr.train_loss in losses, "task.train_loss", tr.train_loss, "one of " + ", ".join(losses))
    _check(t.device in ("auto", "cpu", "cuda"), "train.device", t.device, "auto, cpu or cuda")
    _check(tr.name in TASKS, "task.name", tr.name, "one of " + ", ".join(sorted(TASKS)))
    samplings = ("auto", "kshot", "fixed", "full")
    _check(tr.sampling in samplings, "task.sampling", tr.sampling, "one of " + ", ".join(samplings))
    _check(cfg.model.kind in KINDS, "model.kind", cfg.model.kind, "one of " + ", ".join(KINDS))
    _check(cfg.model.dtype in DTYPES, "model.dtype", cfg.model.dtype, "one of " + ", ".join(DTYPES))
    modes = ("online", "offline", "disabled")
    _check(cfg.log.wandb in modes, "log.wandb", cfg.log.wandb, "one of " + ", ".join(modes))
    _check(cfg.log.align_every >= 0, "log.align_every", cfg.log.align_every, ">= 0 (0 = off)")
    _check(cfg.ckpt.every >= 0, "ckpt.every", cfg.ckpt.every, ">= 0 (0 = only when stopped)")
    _check(
        cfg.schedule.kind in ("warmup", "constant"), "schedule.kind", cfg.schedule.kind, "warmup or constant"
    )


_KINDS = {float: (int, float), int: (int,), bool: (bool,), str: (str,)}
_WORDS = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}


def typed(cls: type, values: dict, prefix: str) -> dict:
    """Check each value against the dataclass field's annotation (a number where a number belongs),
    before any comparison could fail on it with a TypeError."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        want, value = hints[f.name], values[f.name]
        kinds = _KINDS.get(want)
        if kinds and (not isinstance(value, kinds) or (want is not bool and isinstance(value, bool))):
            raise ConfigError(f"{prefix}.{f.name}={value} is invalid: allowed {_WORDS[want]}")
    return values


def optim_config(cfg: DictConfig) -> OptimConfig:
    """The optimizer's own Config from `optimizer.*`: unknown names, unknown keys and wrong types
    are ConfigErrors (exit 2)."""
    values = OmegaConf.to_container(cfg.optimizer, resolve=True)
    name = values.get("name")
    if name not in optimizer_names():
        raise ConfigError(f"optimizer.name={name} is invalid: allowed one of " + ", ".join(optimizer_names()))
    try:
        from zo.optim import get

        cls = get(name)
        o = make_config(typed(cls.Config, values, "optimizer"))
    except ZOError as err:
        raise ConfigError(str(err)) from err
    if o.queries > 1 and not cls.supports_queries:
        raise ConfigError(f"optimizer.queries={o.queries} is invalid: {name} takes one probe pair a step (1)")
    return o


def model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
