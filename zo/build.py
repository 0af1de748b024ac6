"""How a run's pieces are made from its config: the model, its tokenizer, the optimizer and the β
schedule (`build_run`), and what the trajectory log says they were (`trajectory_header`).

Its own module so that both the training loop (zo.runner) and the replay of a logged run
(zo.replay) build a run the same way, and the imports run one way: runner → replay → build.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from zo.config import model_config, optim_config, schedule_config
from zo.models import load_model
from zo.optim import build
from zo.optim.base import ZOOptimizer
from zo.schedule import BetaSchedule

if TYPE_CHECKING:  # omegaconf is imported lazily: the GPU image may lack it
    from omegaconf import DictConfig


def trajectory_header(cfg: DictConfig, optimizer: ZOOptimizer, train_examples: int) -> dict:
    """What the trajectory log's losses apply to (zo.replay checks it against the run's config), and
    what a replay cannot learn from config.yaml: the training set's size (without loading the data),
    the version of the noise draw (zo.noise; a header without it is version 1), and how the probes'
    forwards ran (optimizer.batched_probes; the replay needs only the losses)."""
    m = cfg.model
    o = optimizer.cfg
    return {"optimizer": optimizer.name, "d": optimizer.d, "noise": o.noise,
            "noise_version": o.noise_version, "model": m.name, "dtype": m.dtype,
            "trainable": m.trainable, "seed": cfg.train.seed, "steps": cfg.train.steps,
            "train_examples": train_examples, "batched_probes": o.batched_probes,
            "probe_chunk": o.probe_chunk}  # fmt: skip


def build_run(
    cfg: DictConfig,
    task,
    device: torch.device | None = None,
    train_examples: int = 0,
    noise_version: int | None = None,
) -> tuple[torch.nn.Module, object, object, BetaSchedule]:
    """The model, its tokenizer, the optimizer over it and the β schedule, as `cfg` makes them.

    The one place a run's pieces are made, so that a replay (zo.replay) rebuilds exactly the run's:
    the same train.seed gives the same fresh weights (a head, adapters) and the same noise, and the
    optimizer learns the training set's size (MeZO-SVRG's annealing counts epochs). noise_version:
    the noise draw's version that a logged or checkpointed run used (None: the config's, by default
    the current one).
    """
    model, tokenizer = load_model(model_config(cfg), task.num_labels, cfg.train.seed, device)
    model.eval()  # dropout off: f(x+λz) and f(x−λz) must see the same network
    ocfg = optim_config(cfg)
    if noise_version is not None:
        ocfg = dataclasses.replace(ocfg, noise_version=noise_version)
    optimizer = build(model, ocfg, cfg.train.seed)
    if isinstance(optimizer, ZOOptimizer):
        optimizer.set_data(train_examples, cfg.train.batch_size)
    schedule = BetaSchedule(beta_final=cfg.optimizer.beta, total_steps=cfg.train.steps,
                            **vars(schedule_config(cfg)))  # fmt: skip
    return model, tokenizer, optimizer, schedule
