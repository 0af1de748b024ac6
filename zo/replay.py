"""Rebuild a ZO run's finetuned weights from its base model and its trajectory log.

    python -m zo.replay RUN_DIR --show          # the log as JSONL: {"step": t, "losses": [...]}
    python -m zo.replay RUN_DIR --out DIR       # the finetuned model as a Hugging Face folder

The run folder's `config.yaml` says how to build the model and the optimizer exactly as the run
did (the same seed gives the same fresh weights and noise; the log's header gives the noise draw's
version, 1 where it has none); each logged step is then applied with
`ZOOptimizer.replay`: the step seed regenerates z, the logged losses give the estimate, and the
update runs, with no forward pass. On CPU the result equals the live run's weights bitwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from zo import ZOError
from zo.noise import version_of
from zo.trajectory import read

if TYPE_CHECKING:  # omegaconf is imported lazily: the GPU image may lack it
    from omegaconf import DictConfig


@dataclass
class Start:
    """A logged run's pieces as its config.yaml builds them, at step 0, with the log to walk."""

    cfg: DictConfig
    task: object
    model: nn.Module
    tokenizer: object | None
    optimizer: object
    schedule: object
    records: list


def start_of(run_dir: Path) -> Start:
    """Build the run in `run_dir` afresh (zo.build.build_run) and check its log belongs to it."""
    from omegaconf import OmegaConf

    from data import build_task
    from zo.build import build_run
    from zo.config import values

    header, records = read(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    task = build_task(cfg.task.name, values(cfg, "task"))
    model, tokenizer, optimizer, schedule = build_run(
        cfg, task, train_examples=header.get("train_examples", 0), noise_version=version_of(header)
    )
    noise = header.get("noise", "gaussian")  # logs written before optimizer.noise existed drew Gaussian z
    if (optimizer.name, optimizer.d, optimizer.cfg.noise) != (header["optimizer"], header["d"], noise):
        raise ZOError(
            f"{run_dir}: the log is of {header['optimizer']} over {header['d']} parameters with {noise} "
            f"noise, config.yaml builds {optimizer.name} over {optimizer.d} with {optimizer.cfg.noise}: "
            "they come from different runs"
        )
    return Start(cfg, task, model, tokenizer, optimizer, schedule, records)


def rebuild(run_dir: Path, upto: int | None = None) -> tuple[nn.Module, object | None, int]:
    """The model after the logged steps (all, or those ≤ upto), its tokenizer, and the last step."""
    s = start_of(run_dir)
    last = apply(s.optimizer, s.records, s.cfg.optimizer.lr, s.schedule, upto, str(run_dir))
    s.optimizer.close()
    return s.model, s.tokenizer, last


def apply(optimizer, records: list, lr: float, schedule, upto: int | None, where: str, start: int = 0) -> int:
    """Replay the logged steps (those ≤ upto) on the optimizer's model, which is at step `start`
    (the records begin at start + 1); returns the last step applied. Also how a run resumes from a
    log-mode checkpoint (ckpt.mode=log), and how zo.align walks a run."""
    last = start
    for step, losses in records:
        if upto is not None and step > upto:
            break
        if step != last + 1:
            raise ZOError(f"{where}: the log jumps from step {last} to {step}; it is not one run's")
        optimizer.replay(step, losses, lr, schedule(step) if optimizer.uses_beta else None)
        last = step
    if upto is not None and last != upto:
        raise ZOError(f"{where}: the log ends at step {last}, the checkpoint is at {upto}")
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zo.replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--show", action="store_true", help="print the log as JSONL")
    parser.add_argument("--out", type=Path, help="write the rebuilt model here (save_pretrained)")
    parser.add_argument("--upto", type=int, help="stop after this step")
    args = parser.parse_args(argv)
    if not args.show and args.out is None:
        parser.error("give --show, --out DIR, or both")
    try:
        if args.show:
            header, records = read(args.run_dir)
            print(json.dumps({"header": header}))
            for step, losses in records:
                print(json.dumps({"step": step, "losses": losses}))
        if args.out is not None:
            from zo.models import save_model

            model, tokenizer, last = rebuild(args.run_dir, args.upto)
            if save_model(model, tokenizer, args.out) is None:
                raise ZOError("this model (the quadratic) has no Hugging Face folder to write")
            print(f"replayed {last} steps of {args.run_dir} → {args.out}")
    except ZOError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
