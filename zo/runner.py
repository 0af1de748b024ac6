"""The training loop, top to bottom.

    decide what the output folder allows (resume, skip, start fresh, or refuse: zo.checkpoint)
    load task, model, objective, optimizer   (and restore them from the checkpoint)
    evaluate once before training
    for each step:  the optimizer's probe forwards → estimate → update
                    log a row; sometimes evaluate, check alignment, checkpoint
    evaluate at the end; write summary.json

Every way out of the loop (finished, a signal, a divergence, an exception) goes
through one place, `zo.tracking.RunRecord`, which keeps summary.json's status true.

Each evaluation scores the dev split (which picks the best step, as MeZO selects its
checkpoint) and the test split (which is reported): `best` is the step with the best
dev metric and `test_at_best_dev` that step's test metric, beside the final test metric.

Everything random is a function of (train.seed, step): the batch, the direction,
the rounding. That is what makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from data import Request, TaskData, build_task, load_task_data
from data.readers import decoding
from zo import ZOError, checkpoint
from zo.build import build_run, trajectory_header
from zo.config import SCHEMA_KEYS, model_config, values
from zo.distributed import Ranks, gathered, ranks_from_env, sharded_mean, sharded_scores
from zo.distributed import check as check_shards
from zo.generation import preflight, write_predictions
from zo.models import load_tokenizer, origin, save_model
from zo.noise import mix, version_of
from zo.objective import Objective, batches, build_objective
from zo.optim.base import Probe, ZOOptimizer
from zo.placement import devices_of, pick_device
from zo.replay import apply
from zo.tracking import RunRecord
from zo.trajectory import TrajectoryLog
from zo.trajectory import read as read_trajectory

REPO = Path(__file__).resolve().parents[1]


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


def gradient_of(model, params: list, backward) -> Iterator[torch.Tensor]:
    """After `backward()` runs, each of `params`' gradients as fp32 (zeros where it got none), one at
    a time, clearing its .grad as it goes: a caller that streams them holds one fp32 copy at a time."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        backward()
    for p in params:
        yield p.grad.float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        p.grad = None


def cosine(xs: Iterable[torch.Tensor], ys: Iterable[torch.Tensor]) -> float:
    """cos(x, y) of two vectors given as matching pieces (0 when either is zero)."""
    dot = x_sq = y_sq = 0.0
    for x, y in zip(xs, ys, strict=True):
        dot += float((x * y).sum())
        x_sq += float(x.pow(2).sum())
        y_sq += float(y.pow(2).sum())
    return dot / math.sqrt(x_sq * y_sq) if x_sq > 0 and y_sq > 0 else 0.0


def alignment(model, objective, batch, optimizer) -> dict[str, float]:
    """cos(v, ∇f) for the optimizer's reference vector v (momentum, or z for MeZO), via one backward
    on the step's batch (`python -m zo.align` measures it against a large fixed sample afterwards).

    Costs a parameter-sized gradient buffer plus the activations of one batch:
    roughly training memory for a moment, so it is off by default on large models.
    """
    grads = gradient_of(model, optimizer.params, lambda: objective.loss(model, batch).backward())
    refs = (optimizer.reference_vector(i) for i in range(len(optimizer.params)))
    cos = cosine(refs, grads)
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
        total += float(loss.detach())  # a backward probe's loss still requires grad
    return total


def mean_losses(objective: Objective, model, examples: list, chunk: int, copies: int) -> list[float]:
    """`mean_loss` of each of `copies` probes side by side (optimizer.batched_probes, zo.batched): each
    forward runs a part of the examples repeated once per probe."""
    totals = [0.0] * copies
    for part in list(batches(examples, chunk)) if examples else [examples]:  # (the quadratic refuses)
        losses = objective.losses(model, part, copies) * (len(part) / len(examples) if examples else 1.0)
        totals = [t + v for t, v in zip(totals, losses.tolist(), strict=True)]
    return totals


class StopFlag:
    """SIGTERM, SIGINT and SIGUSR2 (Slurm's warning before a time limit) ask the loop to checkpoint
    and leave after the current step.

    Installed before anything loads. Until the loop is armed (model load, the first evaluation)
    there is nothing to save, so a signal interrupts at once, as KeyboardInterrupt; a second signal
    always does ("now"). After the checkpoint, `pass_on` hands the signal to the handler that was
    there before (submitit's requeue on SIGUSR2), so a preempted job checkpoints first.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)

    def __init__(self) -> None:
        self.signal: int | None = None
        self.armed = False

    def __enter__(self) -> StopFlag:
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if not self.armed or self.signal is not None:
            raise KeyboardInterrupt(signal.Signals(signum).name)
        self.signal = signum

    def pass_on(self) -> None:
        old = self._old.get(self.signal) if self.signal is not None else None
        if callable(old) and old is not signal.default_int_handler:
            old(self.signal, None)

    def __exit__(self, *exc: object) -> None:
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
    with decoding(t.encoding):
        return load_task_data(task, data_root(cfg.data.root), req)


PRECISION_SAMPLES = 1_000_000
PRECISION_WARN = 0.10


def unperturbed_fraction(params: list[torch.Tensor], eps: float, seed: int) -> float:
    """Fraction of coordinates that x ± λz leaves unchanged in the weights' dtype, over an evenly
    strided sample of at most PRECISION_SAMPLES coordinates, z ~ N(0, 1) per coordinate (MeZO's
    direction; a method whose z is scaled otherwise sees about the same rounding). On those
    coordinates both probes see x itself, so the update η·p·z they receive is pure noise."""
    total = sum(p.numel() for p in params)
    stride = max(total // PRECISION_SAMPLES, 1)
    gen = torch.Generator().manual_seed(mix(seed, 0x9EC1))
    same = seen = offset = 0
    for p in params:
        x = p.detach().reshape(-1)[(-offset) % stride :: stride]
        offset += p.numel()
        z = eps * torch.randn(x.numel(), generator=gen).to(x.device)
        for sign in (1.0, -1.0):
            same += int(((x.float() + sign * z).to(x.dtype) == x).sum())
        seen += 2 * x.numel()
    return same / seen if seen else 0.0


def check_precision(optimizer, record: RunRecord, cfg: DictConfig) -> None:
    """Measure `unperturbed_fraction` once (ZO methods only: first-order ones perturb nothing),
    record it, and warn when it is above PRECISION_WARN."""
    if not isinstance(optimizer, ZOOptimizer):
        return
    o = optimizer.cfg
    fraction = unperturbed_fraction(optimizer.params, o.eps, cfg.train.seed)
    record.summary["unperturbed_fraction"] = fraction
    if fraction > PRECISION_WARN:
        rounding = "" if o.stochastic_rounding else ", or optimizer.stochastic_rounding=true"
        print(
            f"warning: x ± λz rounds back to x on {fraction:.0%} of the coordinates in {cfg.model.dtype} "
            f"(λ = optimizer.eps = {o.eps:g}), so their updates are pure noise: use model.dtype=fp32 "
            f"(fp32 master weights) or a larger optimizer.eps{rounding}",
            file=sys.stderr,
        )


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """The run of `cfg` in `out_dir`, or, on a data-parallel rank other than 0, in a scratch folder
    (only rank 0 writes the run folder) that is removed however the run ends."""
    device = pick_device(cfg.train.device)
    ranks = ranks_from_env(device)
    if ranks.lead:
        return train(cfg, out_dir, ranks, device)
    scratch = Path(tempfile.mkdtemp(prefix=f"zo-rank{ranks.rank}-"))
    try:
        quiet = OmegaConf.merge(cfg, {"log": {"wandb": "disabled"}, "save": {"model": False}})
        return train(quiet, scratch, ranks, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def train(cfg: DictConfig, out_dir: Path, ranks: Ranks, device: torch.device) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    with checkpoint.held(out_dir):  # or refuses: another process is in this folder
        return _train(cfg, out_dir, ranks, device)


def _train(cfg: DictConfig, out_dir: Path, ranks: Ranks, device: torch.device) -> dict:
    folder = checkpoint.inspect(out_dir, OmegaConf.to_container(cfg, resolve=True), SCHEMA_KEYS)  # or refuses
    if ranks.world > 1 and cfg.model.device_map is not None:
        raise ZOError("model.device_map under torchrun is not supported: each rank holds the whole model on "
                      "its own GPU; drop model.device_map or run one process")  # fmt: skip
    if ranks.world > 1 and (folder.header or folder.finished):
        raise ZOError(
            f"{out_dir} holds a run: a data-parallel run starts in a fresh folder (resuming one is not "
            "implemented yet; resume it on one rank with the same train.shards)"
        )
    if folder.finished is not None:
        print(f"already finished: {out_dir} (force=true runs it again)")
        return folder.finished
    with StopFlag() as stop, RunRecord(out_dir, cfg, folder) as record:
        # ---- build everything -------------------------------------------------------------------
        task = build_task(cfg.task.name, values(cfg, "task"))
        data = load_data(cfg, task)
        record.summary["model_loaded"] = origin(model_config(cfg))  # refuses a mistyped path first
        eval_set = data.test[: cfg.train.eval_samples]
        dev_set = data.dev[: cfg.train.dev_samples]
        if task.task_type == "generate":  # the objective's refusals and the prompt lengths, before the model
            kind, t = cfg.model.kind, cfg.task
            tok = load_tokenizer(model_config(cfg)) if kind == "causal" else None
            preflight(task, data.train + dev_set + eval_set, kind, tok, t.max_length, t.train_loss)
        # A resumed run draws the noise version its checkpoint records (version 1 if it records none).
        noise_version = version_of(folder.header) if folder.header else None
        model, tokenizer, optimizer, schedule = build_run(cfg, task, device, len(data.train), noise_version)
        devices = devices_of(model)  # one, or those of a device map (inputs go to the first)
        objective = build_objective(task, cfg.model.kind, tokenizer, cfg.task.max_length, cfg.task.train_loss)
        synthetic = task.task_type == "synthetic"
        if not synthetic and (not data.train or not eval_set):
            raise ZOError(f"task {task.name}: empty train or test split after sampling; check task.* sizes")
        steps, metric = cfg.train.steps, objective.metric
        # What picks the best step: dev; the objective itself on the quadratic; nothing without a dev
        # split (picking on test would report a selected test score as if it were held out).
        select = f"dev_{metric}" if dev_set else (metric if synthetic else None)
        selected_on = "dev" if dev_set else ("objective" if synthetic else None)

        # Data parallel (zo.distributed): fixed shards of every batch and evaluation set, rank r taking
        # shards r, r+N, ...; train.shards=1 under N ranks means N.
        shards = cfg.train.shards if cfg.train.shards > 1 or ranks.world == 1 else ranks.world
        check_shards(shards, ranks, backward=not isinstance(optimizer, ZOOptimizer))
        sharded = shards > 1 and not synthetic
        if sharded and min(cfg.train.batch_size, len(eval_set), len(dev_set) or shards) < shards:
            raise ZOError(f"train.shards={shards}: train.batch_size and the evaluation sets need at least "
                          "one example per shard")  # fmt: skip
        bs = cfg.train.eval_batch_size

        def scores_of(examples: list) -> dict[str, float]:
            if not sharded:
                return objective.evaluate(model, examples, bs)
            return sharded_scores(
                lambda part: objective.evaluate(model, list(part), bs), examples, shards, ranks
            )

        def evaluate(step: int) -> dict[str, float]:
            answers = objective.predictions  # generation: every answer, kept from the last evaluation
            if answers is not None:
                answers.clear()
            scores = scores_of(eval_set)
            if answers is not None and step == steps:
                answers = gathered(answers, len(eval_set), shards, ranks) if sharded else answers
                record.summary["predictions"] = str(write_predictions(out_dir, answers))
            if dev_set:
                scores |= {f"dev_{k}": v for k, v in scores_of(dev_set).items()}
            return scores

        forwards = [0.0]  # this step's loss evaluations, in batches (metrics.jsonl's `forwards`)

        def probe_loss(probe: Probe | tuple[Probe, ...], batch: list) -> float | list[float]:
            # What a step costs, counted the same for every method: a probe on the batch is one, P
            # probes side by side are P, a probe over the whole training set (MeZO-SVRG) is N / B (1
            # on the quadratic, which has no examples).
            full = not isinstance(probe, tuple) and probe.data == "full" and bool(batch)
            forwards[0] += (
                len(probe) if isinstance(probe, tuple) else len(data.train) / len(batch) if full else 1
            )
            if isinstance(probe, tuple):  # optimizer.batched_probes: the probes side by side, on the batch
                copies = len(probe)
                if sharded:  # each shard's losses, combined as an evaluation's scores are

                    def per_shard(part) -> dict[int, float]:
                        return dict(enumerate(mean_losses(objective, model, list(part), bs, copies)))

                    means = sharded_scores(per_shard, batch, shards, ranks)
                    return [means[j] for j in range(copies)]
                return mean_losses(objective, model, batch, bs, copies)
            examples = data.train if full else batch
            if sharded:
                return sharded_mean(lambda part: mean_loss(objective, model, list(part), bs, backward=False),
                                    examples, shards, ranks)  # fmt: skip
            with torch.set_grad_enabled(probe.grad):
                return mean_loss(objective, model, examples, bs, backward=probe.grad)

        def save(step: int) -> None:
            state, mode = record.state(), cfg.ckpt.mode
            checkpoint.save(out_dir, model, optimizer, step, record.metrics_bytes, record.config, state, mode)

        # ---- start or resume --------------------------------------------------------------------
        if cfg.ckpt.mode == "log" and not isinstance(optimizer, ZOOptimizer):
            raise ZOError(f"ckpt.mode=log needs a ZO optimizer ({optimizer.name} updates from gradients): "
                          "use ckpt.mode=full")  # fmt: skip
        header = checkpoint.load(out_dir, model, optimizer) if folder.header else {"step": 0}
        start = header["step"]
        if header.get("mode") == "log":  # rebuild the weights and state from the base model and the log
            apply(optimizer, read_trajectory(out_dir)[1], cfg.optimizer.lr, schedule, start, str(out_dir))
        trajectory = (  # the probes' losses of every step: the run in ~21 bytes a step (zo.replay)
            TrajectoryLog(
                out_dir, trajectory_header(cfg, optimizer, len(data.train)), start if folder.header else None
            )
            if isinstance(optimizer, ZOOptimizer)
            else None  # first-order updates need the gradients
        )
        record.begin(metric, select, selected_on, devices, ranks.world, optimizer.d, data.info)
        check_precision(optimizer, record, cfg)
        if start == 0:
            record.row({"step": 0, **evaluate(0)}, evaluated=True)
        stop.armed = True
        # ---- the ZO loop --------------------------------------------------------------------------
        for step in range(start + 1, steps + 1):
            t0 = time.perf_counter()
            batch = train_batch(data.train, cfg.train.batch_size, cfg.train.seed, step)
            beta = schedule(step) if optimizer.uses_beta else None
            forwards[0] = 0.0
            losses = optimizer.step(step, lambda probe, b=batch: probe_loss(probe, b), cfg.optimizer.lr, beta)
            if trajectory is not None:
                trajectory.write(step, losses)
            for used in devices:
                if used.type == "cuda":
                    torch.cuda.synchronize(used)
            row = {
                "step": step,
                "loss": optimizer.logged_loss(losses),
                "lr": optimizer.logged_lr(cfg.optimizer.lr)
                if isinstance(optimizer, ZOOptimizer)
                else cfg.optimizer.lr,
                "beta_t": beta,
                "theta": cfg.optimizer.theta if optimizer.name == "conmezo" else None,
                "projected_grad": optimizer.projected_grad,
                "forwards": forwards[0],
                "step_time_s": time.perf_counter() - t0,
            }
            if isinstance(optimizer, ZOOptimizer):
                row |= optimizer.step_metrics()
            if cfg.log.align_every and step % cfg.log.align_every == 0:
                row |= alignment(model, objective, batch, optimizer)
            evaluated = (cfg.train.eval_every and step % cfg.train.eval_every == 0) or step == steps
            if evaluated:
                row |= evaluate(step)
            record.row(row, evaluated)
            if stop.signal is not None or (cfg.ckpt.every and step % cfg.ckpt.every == 0):
                save(step)
            if stop.signal is not None:
                record.interrupted(stop.signal, step)
                stop.pass_on()  # submitit requeues the job and exits here
                break
        else:
            if cfg.save.model and steps > 0:  # an evaluation-only run has nothing new to save
                saved = save_model(model, tokenizer, out_dir / "model")
                record.summary["model_dir"] = None if saved is None else str(saved)
            record.finished()
    return record.summary
