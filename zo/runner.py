"""The training loop, top to bottom.

    load task, model, objective, optimizer   (or resume them from checkpoint.pt)
    evaluate once before training
    for each step:  the optimizer's probe forwards → estimate → update
                    log a row; sometimes evaluate, check alignment, checkpoint
    evaluate at the end; write summary.json

Each evaluation scores the dev split (which picks the best step, as MeZO selects its
checkpoint) and the test split (which is reported): `best` is the step with the best
dev metric and `test_at_best_dev` that step's test metric, beside the final test metric.

Everything random is a function of (train.seed, step): the batch, the direction,
the rounding. That is what makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import resource
import signal
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from data import DataError, Request, TaskData, build_task, load_task_data
from zo import ZOError, checkpoint
from zo.config import model_config, optim_config
from zo.models import load_model
from zo.noise import mix
from zo.objective import Objective, batches, build_objective
from zo.optim import build
from zo.optim.base import Probe
from zo.schedule import BetaSchedule
from zo.tracking import MetricsLog, Progress, WandB, write_json

REPO = Path(__file__).resolve().parents[1]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ZOError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    return torch.device(name)


def data_root(value: str | None) -> Path | None:
    """data.root (default: env ZO_DATA_ROOT), else the shared datasets folder beside the repo."""
    if value:
        return Path(value).expanduser()
    shared = REPO.parent / "shared" / "datasets"
    return shared if shared.is_dir() else None


def batch_indices(n: int, size: int, seed: int, step: int) -> list[int]:
    """Indices of step `step`'s batch: epochs of seeded permutations, a pure function of its inputs."""
    out: list[int] = []
    position = (step - 1) * size
    while len(out) < size:
        epoch, offset = divmod(position + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch, 0xBA7C)))
        out += perm[offset : offset + size - len(out)].tolist()
    return out


def train_batch(train: list, size: int, seed: int, step: int) -> list:
    return [train[i] for i in batch_indices(len(train), size, seed, step)] if train else []


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def alignment(model, objective, batch, optimizer) -> dict[str, float]:
    """cos(v, ∇f) for the optimizer's reference vector v (momentum, or z for MeZO), via one backward.

    Costs a parameter-sized gradient buffer plus the activations of one batch:
    roughly training memory for a moment, so it is off by default on large models.
    """
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        objective.loss(model, batch).backward()
    dot = ref_sq = grad_sq = 0.0
    for i, p in enumerate(optimizer.params):
        grad = p.grad.float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        ref = optimizer.reference_vector(i)
        dot += float((ref * grad).sum())
        ref_sq += float(ref.pow(2).sum())
        grad_sq += float(grad.pow(2).sum())
        p.grad = None
    cos = dot / math.sqrt(ref_sq * grad_sq) if ref_sq > 0 and grad_sq > 0 else 0.0
    return {"align_cos": cos, "align_cos2": cos * cos, "inv_d": 1.0 / optimizer.d}


def mean_loss(objective: Objective, model, examples: list, chunk: int, backward: bool) -> float:
    """The loss's mean over `examples`, in forwards of at most `chunk` (the whole training set does
    not fit one); with `backward`, gradients accumulate as those of that mean."""
    parts = list(batches(examples, chunk)) if examples else [examples]  # the quadratic has no data
    total = 0.0
    for part in parts:
        loss = objective.loss(model, part) * (len(part) / len(examples) if examples else 1.0)
        if backward:
            loss.backward()
        total += float(loss)
    return total


class StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and leave after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:  # a second signal means "now"
            raise KeyboardInterrupt
        self.signal = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def load_data(cfg: DictConfig, task) -> TaskData:
    if task.task_type == "synthetic":
        return TaskData([], [], [], {"task": task.name, "sampling": "none"})
    sampling = cfg.task.sampling
    if sampling == "auto":
        sampling = "kshot" if cfg.model.kind == "mlm" else "fixed"
    t = cfg.task
    req = Request(sampling, t.data_seed, t.k, t.num_train, t.num_dev, t.num_test, t.test_cap)
    return load_task_data(task, data_root(cfg.data.root), req)


def run(cfg: DictConfig, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "summary.json"
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if previous.get("status") == "finished" and cfg.resume and not cfg.force:
        print(f"already finished: {out_dir} (force=true runs it again)")
        return previous
    OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)

    # ---- build everything ---------------------------------------------------------------------
    device = pick_device(cfg.train.device)
    task = build_task(cfg.task.name)
    data = load_data(cfg, task)
    model, tokenizer = load_model(model_config(cfg), task.num_labels, cfg.train.seed)
    model.to(device).eval()  # dropout off: f(x+λz) and f(x−λz) must see the same network
    objective = build_objective(task, cfg.model.kind, tokenizer, cfg.task.max_length, cfg.task.train_loss)
    optimizer = build(model, optim_config(cfg), cfg.train.seed)
    schedule = BetaSchedule(
        beta_final=cfg.optimizer.beta, total_steps=cfg.train.steps, **OmegaConf.to_container(cfg.schedule)
    )
    eval_set = data.test[: cfg.train.eval_samples]
    dev_set = data.dev[: cfg.train.dev_samples]
    synthetic = task.task_type == "synthetic"
    if not synthetic and (not data.train or not eval_set):
        raise ZOError(f"task {task.name}: empty train or test split after sampling; check task.* sizes")
    steps, metric = cfg.train.steps, objective.metric
    # What picks the best step: dev; the objective itself on the quadratic; nothing without a dev split
    # (picking on test would report a selected test score as if it were held out).
    select = f"dev_{metric}" if dev_set else (metric if synthetic else None)
    lower_is_better = metric == "loss"

    def evaluate() -> dict[str, float]:
        scores = objective.evaluate(model, eval_set, cfg.train.eval_batch_size)
        if dev_set:
            scores |= {
                f"dev_{k}": v
                for k, v in objective.evaluate(model, dev_set, cfg.train.eval_batch_size).items()
            }
        return scores

    def probe_loss(probe: Probe, batch: list) -> float:
        examples = data.train if probe.data == "full" else batch
        with torch.set_grad_enabled(probe.grad):
            return mean_loss(objective, model, examples, cfg.train.eval_batch_size, backward=probe.grad)

    # ---- start or resume --------------------------------------------------------------------
    resumed = checkpoint.load(out_dir, model, optimizer) if cfg.resume else None
    start = resumed[0] if resumed else 0
    log = MetricsLog(out_dir / "metrics.jsonl", keep_bytes=resumed[1] if resumed else None)
    summary = {
        "status": "running",
        "error": None,
        "step": start,
        "steps": steps,
        "metric": metric,
        "initial": previous.get("initial") if resumed else None,
        "final": None,
        "best": previous.get("best") if resumed else None,
        "selected_on": "dev" if dev_set else ("objective" if synthetic else None),
        "test_at_best_dev": previous.get("test_at_best_dev") if resumed else None,
        "s_per_step": None,
        "peak_mem_mib": None,
        "device": str(device),
        "params": optimizer.d,
        "overrides": list(cfg.get("overrides", [])),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "data": data.info,
        "output_dir": str(out_dir),
    }
    write_json(summary_path, summary)
    wandb = WandB(cfg, out_dir, run_id=previous.get("wandb_id") or f"zo-{mix(time.time_ns()) % 10**10}")
    summary["wandb_id"] = wandb.run.id if wandb.run is not None else None

    def record(row: dict, evaluated: bool) -> None:
        # The mark says which rows hold f(x) when the metric is the training loss (the quadratic).
        log.write({**row, "evaluated": True} if evaluated else row)
        wandb.log(row)
        progress.step(row, evaluated)
        if not evaluated or select is None:
            return
        best, value = summary["best"], row[select]
        if best is None or (value < best[select] if lower_is_better else value > best[select]):
            summary["best"] = {metric: row[metric], select: value, "step": row["step"]}
            summary["test_at_best_dev"] = row[metric] if dev_set else None

    progress = Progress(steps, start, metric)
    if start == 0:
        summary["initial"] = evaluate()
        record({"step": 0, **summary["initial"]}, evaluated=True)
    stop = StopFlag()
    times: list[float] = []
    try:
        # ---- the ZO loop ----------------------------------------------------------------------
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            batch = train_batch(data.train, cfg.train.batch_size, cfg.train.seed, step)
            beta = schedule(step) if optimizer.uses_beta else None
            losses = optimizer.step(step, lambda probe, b=batch: probe_loss(probe, b), cfg.optimizer.lr, beta)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            row = {
                "step": step,
                "loss": optimizer.logged_loss(losses),
                "lr": cfg.optimizer.lr,
                "beta_t": beta,
                "theta": cfg.optimizer.theta if optimizer.name == "conmezo" else None,
                "projected_grad": optimizer.projected_grad,
                "step_time_s": times[-1],
            }
            if cfg.log.align_every and step % cfg.log.align_every == 0:
                row |= alignment(model, objective, batch, optimizer)
            evaluated = (cfg.train.eval_every and step % cfg.train.eval_every == 0) or step == steps
            if evaluated:
                row |= evaluate()
            record(row, evaluated)
            summary["step"] = step
            if stop.signal is not None or (cfg.ckpt.every and step % cfg.ckpt.every == 0):
                checkpoint.save(out_dir, model, optimizer, step, log.bytes)
            if stop.signal is not None:
                summary["status"] = "interrupted"
                summary["error"] = (f"stopped by signal {stop.signal} after step {step}; resume with "
                                    f"hydra.run.dir={out_dir} resume=true")  # fmt: skip
                break
        else:
            summary["status"] = "finished"
            kept = (metric, "em", "eval_loss")
            summary["final"] = summary["initial"] if steps == 0 else {
                k: v for k, v in row.items() if k.removeprefix("dev_") in kept}  # fmt: skip
    except SystemExit:  # submitit's preemption/timeout handler exits from inside the loop
        checkpoint.save(out_dir, model, optimizer, summary["step"], log.bytes)
        summary["status"] = "interrupted"
        summary["error"] = f"job exited after step {summary['step']}; a requeued job resumes from there"
        raise
    except (ZOError, DataError, KeyboardInterrupt) as err:
        summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        summary["error"] = str(err) or "interrupted"
        raise
    finally:
        stop.restore()
        progress.close()
        log.close()
        summary["s_per_step"] = statistics.median(times) if times else None
        summary["peak_mem_mib"] = peak_memory_mib(device)
        write_json(summary_path, summary)
        wandb.finish(summary)
    return summary
