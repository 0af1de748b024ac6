"""Checkpoints that survive a killed job and a full disk.

A checkpoint holds what a resumed run needs to continue *exactly*: the trainable
parameters (in ZO full finetuning all of them change), optimizer state (the
momentum buffer), the step, and how many bytes of metrics.jsonl belonged to that
step (rows written after it are dropped on resume and produced again). Batches
and perturbations are pure functions of (seed, step), so no RNG stream needs
saving. Files are written beside the target and renamed into place, so a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch
from torch import nn

from zo import ZOError

NAME = "checkpoint.pt"


def save(out_dir: Path, model: nn.Module, optimizer, step: int, metrics_bytes: int) -> Path:
    target = out_dir / NAME
    tmp = target.with_suffix(".tmp")
    state = {
        "step": step,
        "metrics_bytes": metrics_bytes,
        "params": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
    }
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise ZOError(
                f"disk full while writing {target}; the previous checkpoint and metrics are intact: "
                "free space and rerun with resume=true in the same folder"
            ) from err
        raise ZOError(f"cannot write checkpoint {target}: {err.strerror}") from err
    return target


def load(out_dir: Path, model: nn.Module, optimizer) -> tuple[int, int] | None:
    """Restore into model and optimizer; return (step, metrics_bytes), or None without a checkpoint."""
    path = out_dir / NAME
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["params"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state["metrics_bytes"]
