"""Check the composed config before any model or data loads.

A sweep that dies an hour in because θ was typed in degrees wastes a GPU hour;
a one-line error at start-up costs nothing. Every check names the key and the
values it accepts.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from zo.models import KINDS, ModelConfig
from zo.optim import names as optimizer_names
from zo.optim.base import DTYPES, OptimConfig


class ConfigError(ValueError):
    """A config value is out of range; exit code 2."""


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is invalid: allowed {allowed}")


def validate(cfg: DictConfig) -> None:
    from data import TASKS

    o, t, tr = cfg.optimizer, cfg.train, cfg.task
    _check(o.name in optimizer_names(), "optimizer.name", o.name, "one of " + ", ".join(optimizer_names()))
    _check(0.0 <= o.theta <= math.pi / 2, "optimizer.theta", o.theta, "0 <= theta <= pi/2 (radians)")
    _check(0.0 <= o.beta < 1.0, "optimizer.beta", o.beta, "0 <= beta < 1")
    _check(o.eps > 0, "optimizer.eps", o.eps, "eps > 0")
    _check(o.lr >= 0, "optimizer.lr", o.lr, "lr >= 0")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "weight_decay >= 0")
    moms = [*DTYPES, "param"]
    _check(
        o.momentum_dtype in moms, "optimizer.momentum_dtype", o.momentum_dtype, "one of " + ", ".join(moms)
    )
    for key in ("unit_u", "stochastic_rounding", "fused"):
        _check(isinstance(o[key], bool), f"optimizer.{key}", o[key], "true or false")
    _check(t.steps >= 0, "train.steps", t.steps, "steps >= 0")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "batch_size >= 1")
    _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "eval_every >= 0 (0 = only at start and end)")
    _check(t.eval_samples >= 1, "train.eval_samples", t.eval_samples, "eval_samples >= 1")
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


def optim_config(cfg: DictConfig) -> OptimConfig:
    return OptimConfig(**OmegaConf.to_container(cfg.optimizer, resolve=True))


def model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True))
