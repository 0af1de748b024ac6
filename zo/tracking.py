"""Where a run's numbers go: metrics.jsonl and summary.json on disk, W&B, and the terminal.

Local files are the source of truth (the report reads them, resume truncates
them); W&B mirrors the same rows. Each row is flushed as written, so a killed
job keeps everything up to its last step.

`RunRecord` owns all of it for one run, and is the one place where a run ends:
whatever leaves the `with` block (the loop finishing, a signal, a divergence, an
exception of any kind, Ctrl-C during model load) sets summary.json's status
(`finished|interrupted|diverged|failed`) and its one-line error, with the command that
resumes the run when there is something to resume.
"""

from __future__ import annotations

import json
import math
import os
import resource
import secrets
import signal
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from zo import Diverged, ZOError
from zo.checkpoint import NAME, Folder, resume_command, trained_rows

KEPT = ("accuracy", "f1", "em", "eval_loss")  # what `final` keeps of the last evaluation (with the metric)


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically: a crash leaves either the old or the new file, never half of one."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(data, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def peak_memory_mib(devices: list[torch.device]) -> float:
    """Peak GPU memory summed over the run's GPUs (several under a device map), else peak RSS."""
    gpus = [d for d in devices if d.type == "cuda"]
    if gpus:
        return sum(torch.cuda.max_memory_allocated(d) for d in gpus) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


class MetricsLog:
    def __init__(self, path: Path, keep_bytes: int | None) -> None:
        """Open for appending; on resume keep only the first `keep_bytes` (the checkpointed rows)."""
        self.path = path
        if keep_bytes is None:
            path.write_text("")
        else:
            with open(path, "r+b") as fh:
                fh.truncate(keep_bytes)
        self._fh = open(path, "a")  # noqa: SIM115 - held open for the whole run

    def write(self, row: dict) -> None:
        try:
            self._fh.write(json.dumps(row) + "\n")
            self._fh.flush()
        except OSError as err:
            raise ZOError(f"cannot append to {self.path} ({err.strerror}); free space and resume") from err

    @property
    def bytes(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()


class WandB:
    """Mirror rows to Weights & Biases; `disabled` imports nothing, `offline` needs no network."""

    def __init__(self, cfg: DictConfig, out_dir: Path, run_id: str) -> None:
        self.run = None
        if cfg.log.wandb == "disabled":
            return
        import wandb

        try:
            self.run = wandb.init(
                project=cfg.log.project,
                mode=cfg.log.wandb,
                dir=str(out_dir),
                id=run_id,
                resume="allow",
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as err:  # UsageError without a login, CommError offline, ...: one line
            # A failed init leaves the process's W&B service half set up, and a later init in the same
            # process (the next job of a local sweep, the next test) can then hang until its timeout
            # (wandb issue 9865): tear the service down, so the next init starts a fresh one.
            wandb.teardown()
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ZOError(
                f"W&B could not start with log.wandb={cfg.log.wandb} ({type(err).__name__}: {first}); "
                "run `wandb login` (or set WANDB_API_KEY), or use log.wandb=offline (`wandb sync` later) "
                "or log.wandb=disabled"
            ) from err

    def log(self, row: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            for key in ("status", "s_per_step", "peak_mem_mib"):
                self.run.summary[key] = summary.get(key)
            self.run.finish(exit_code=0 if summary.get("status") == "finished" else 1)


def bar_text(metric: str) -> str:
    """The bar's numbers: the training loss, and the metric at the last evaluation unless the metric
    is the loss itself (the quadratic), which would show it twice."""
    last = "{task.fields[last]}"
    return f"loss {last}" if metric == "loss" else f"loss {{task.fields[loss]}}  {metric} {last}"


class Progress:
    """A rich progress bar on a terminal; on a log file, one line per evaluation instead."""

    def __init__(self, total: int, start: int, metric: str) -> None:
        self.metric = metric
        self.last = "—"
        self.bar = None
        if sys.stdout.isatty() and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]ZO"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(bar_text(metric)),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("zo", total=total, completed=start, loss="—", last="—")
            self.bar.start()

    def step(self, row: dict, evaluated: bool) -> None:
        if evaluated:
            self.last = f"{row[self.metric]:.4f}"
            if self.bar is None:
                loss = f"loss {row['loss']:.4f} " if "loss" in row and self.metric != "loss" else ""
                print(f"step {row['step']}: {loss}{self.metric} {self.last}", flush=True)
        if self.bar is not None:
            self.bar.update(
                self.task, completed=row["step"], loss=f"{row.get('loss', 0):.4f}", last=self.last
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_summary(summary: dict) -> None:
    """The few numbers a person wants when a run ends."""
    from rich.console import Console
    from rich.table import Table

    metric = summary["metric"] or "metric"  # None when the run stopped before its objective was built

    def fmt(block: dict | None) -> str:
        return "—" if not block or metric not in block else f"{block[metric]:.4f}"

    table = Table(title=f"zo-runner: {summary['status']}", show_header=False)
    table.add_row(f"{metric} before", fmt(summary.get("initial")))
    table.add_row(f"{metric} after", fmt(summary.get("final")))
    table.add_row("steps", f"{summary['step']} / {summary['steps']}")
    params = summary.get("params")
    table.add_row("trainable params", "—" if params is None else f"{params:,}")
    s = summary.get("s_per_step")
    table.add_row("s/step (median)", "—" if s is None else f"{s:.4f}")
    peak = summary.get("peak_mem_mib")
    table.add_row("peak memory", "—" if peak is None else f"{peak:.0f} MiB ({summary['device']})")
    table.add_row("output", summary["output_dir"])
    if summary.get("model_dir"):
        table.add_row("model", summary["model_dir"])
    Console().print(table)


class RunRecord:
    """summary.json, metrics.jsonl, W&B and the progress display of one run, and how it ended.

    Entered before anything loads. Until `begin` (setup done, checkpoint restored) a folder
    that holds an earlier run is left exactly as it was, whatever happens; from `begin` on,
    the run owns its files. Leaving the block writes the summary with its status:
    KeyboardInterrupt (Ctrl-C, or a signal before training starts) is `interrupted` and
    swallowed, so `run` returns the summary; SystemExit (a Slurm requeue) is `interrupted` and
    passed on; Diverged is `diverged`; every other exception is `failed`, and the project's own
    errors (and running out of memory) come out as one ZOError line that ends with how to resume.
    """

    def __init__(self, out_dir: Path, cfg: DictConfig, folder: Folder) -> None:
        self.out_dir, self.cfg, self.folder = out_dir, cfg, folder
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.command = resume_command(out_dir, list(cfg.get("overrides", [])))
        header = folder.header or {}
        saved = header.get("runner", {})
        self.summary: dict = {
            "status": "running",
            "error": None,
            "step": header.get("step", 0),
            "steps": cfg.train.steps,
            "metric": None,
            "initial": saved.get("initial"),
            "final": None,
            "best": saved.get("best"),
            "selected_on": None,
            "test_at_best_dev": saved.get("test_at_best_dev"),
            "s_per_step": None,
            "peak_mem_mib": None,
            "device": None,
            "params": None,
            "unperturbed_fraction": None,
            "wandb_id": saved.get("wandb_id") or f"zo-{secrets.token_hex(5)}",
            "overrides": list(cfg.get("overrides", [])),
            "config": self.config,
            "data": None,
            "output_dir": str(out_dir),
            "model_loaded": None,  # the folder or hub id the run loaded (zo.models.origin)
            "model_dir": None,  # the finetuned model's folder (save.model), once written
        }
        self.last_eval: dict | None = saved.get("last_eval")
        self.loss_start: float | None = saved.get("loss_start")
        self.zero_steps: int = saved.get("zero_steps", 0)
        self.times: list[float] = []
        self.devices: list[torch.device] = []
        self.log: MetricsLog | None = None
        self.wandb: WandB | None = None
        self.progress: Progress | None = None
        self.started = False

    def __enter__(self) -> RunRecord:
        if not self.folder.held_run:
            write_json(self.out_dir / "summary.json", self.summary)  # a setup failure is recorded too
        return self

    # ---- the run ----------------------------------------------------------------------------
    def begin(self, metric: str, select: str | None, selected_on: str | None, devices: list[torch.device],
              ranks: int, params: int, data: dict) -> None:  # fmt: skip
        """Setup is done: from here on the run owns its folder. W&B starts first, so a W&B
        failure leaves a resumed folder's metrics as they were."""
        self.metric, self.select, self.devices = metric, select, devices
        self.summary |= {"metric": metric, "selected_on": selected_on, "device": "+".join(map(str, devices)),
                         "ranks": ranks, "params": params, "data": data}  # fmt: skip
        self.wandb = WandB(self.cfg, self.out_dir, self.summary["wandb_id"])
        header = self.folder.header
        self.log = MetricsLog(
            self.out_dir / "metrics.jsonl", keep_bytes=header["metrics_bytes"] if header else None
        )
        OmegaConf.save(self.cfg, self.out_dir / "config.yaml", resolve=True)
        self.progress = Progress(self.summary["steps"], self.summary["step"], metric)
        self.started = True
        write_json(self.out_dir / "summary.json", self.summary)

    def row(self, row: dict, evaluated: bool) -> None:
        """Log one step's row everywhere; note the best evaluation; stop a diverging run."""
        assert self.log is not None and self.wandb is not None and self.progress is not None
        # The mark says which rows hold f(x) when the metric is the training loss (the quadratic).
        self.log.write({**row, "evaluated": True} if evaluated else row)
        self.wandb.log(row)
        self.progress.step(row, evaluated)
        self.summary["step"] = row["step"]
        if "step_time_s" in row:
            self.times.append(row["step_time_s"])
        if evaluated:
            self._evaluated(row)
            self._watch_eval(row)
        if row["step"] >= 1:
            self._watch(row["step"], row["loss"], row["projected_grad"])

    def _evaluated(self, row: dict) -> None:
        metric, select = self.metric, self.select
        self.last_eval = {k: v for k, v in row.items() if k.removeprefix("dev_") in (metric, *KEPT)}
        if row["step"] == 0:
            self.summary["initial"] = {k: v for k, v in row.items() if k != "step"}
        if select is None:
            return
        best, value = self.summary["best"], row[select]
        lower = metric.endswith("loss")  # the quadratic's loss, eval_loss (task.select_on)
        if best is None or (value < best[select] if lower else value > best[select]):
            self.summary["best"] = {metric: row[metric], select: value, "step": row["step"]}
            self.summary["test_at_best_dev"] = row[metric] if select.startswith("dev_") else None

    def _watch_eval(self, row: dict) -> None:
        """Divergence as the evaluation sees it: its loss (the dev split's where there is one; the
        quadratic's f(x)) far above its step-0 value. Steadier than one batch's training loss, so a
        factor of 2 can stop a run that wanders off long before the training loss reaches
        diverge_factor times its start."""
        factor, start = self.cfg.train.diverge_eval, self.summary["initial"] or {}
        key = next((k for k in ("dev_eval_loss", "eval_loss", "loss") if k in row and k in start), None)
        if (
            not factor
            or key is None
            or row["step"] == 0
            or start[key] <= 0
            or row[key] <= factor * start[key]
        ):
            return
        raise Diverged(
            f"diverged at step {row['step']}: {key} {row[key]:.6g} is over {factor:g} times its value at "
            f"step 0 ({start[key]:.6g}); lower optimizer.lr (train.diverge_eval=0: no check)"
        )

    def _watch(self, step: int, loss: float, projected: float) -> None:
        """Divergence: the training loss far above its first value, or an estimate stuck at exactly
        0 while the loss is finite (the probes no longer see each other: nothing moves)."""
        t = self.cfg.train
        if self.loss_start is None:
            self.loss_start = loss
        if t.diverge_factor and self.loss_start > 0 and loss > t.diverge_factor * self.loss_start:
            raise Diverged(
                f"diverged at step {step}: training loss {loss:.6g} is over {t.diverge_factor:g} times its "
                f"first value {self.loss_start:.6g}; lower optimizer.lr (train.diverge_factor=0: no check)"
            )
        self.zero_steps = self.zero_steps + 1 if projected == 0.0 and math.isfinite(loss) else 0
        if t.stall_steps and self.zero_steps >= t.stall_steps:
            raise Diverged(
                f"stalled at step {step}: the projected gradient was exactly 0 for {self.zero_steps} steps "
                f"(loss {loss:.6g}), so nothing moves: the weights left the loss's range (lower "
                "optimizer.lr) or λ is below its resolution (raise optimizer.eps, or model.dtype=fp32)"
            )

    def state(self) -> dict:
        """What a resumed run needs of this record: saved in the checkpoint beside the weights."""
        keys = ("initial", "best", "test_at_best_dev", "wandb_id")
        return {k: self.summary[k] for k in keys} | {
            "last_eval": self.last_eval,
            "loss_start": self.loss_start,
            "zero_steps": self.zero_steps,
        }

    @property
    def metrics_bytes(self) -> int:
        assert self.log is not None
        return self.log.bytes

    def interrupted(self, signum: int, step: int) -> None:
        """The loop stopped at a step boundary on a signal, after saving a checkpoint."""
        name = signal.Signals(signum).name
        self._end("interrupted", f"stopped by {name} after step {step}{self._hint()}")

    def finished(self) -> None:
        self.summary["final"] = self.last_eval
        self._end("finished", None)

    def _end(self, status: str, error: str | None) -> None:
        self.summary["status"], self.summary["error"] = status, error

    # ---- every way out ----------------------------------------------------------------------
    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        line = None if err is None else self._describe(err)
        try:
            self._close()
        finally:
            if self.started or not self.folder.held_run:
                write_json(self.out_dir / "summary.json", self.summary)
            if self.wandb is not None:
                self.wandb.finish(self.summary)
        if line is not None and isinstance(err, Exception) and self._one_line(err):
            raise (Diverged if isinstance(err, Diverged) else ZOError)(
                line
            ) from err  # a sweeper tells them apart
        return isinstance(err, KeyboardInterrupt)

    def _describe(self, err: BaseException) -> str:
        """Status and one-line error for an exception leaving the run; the line is returned."""
        where = f"after step {self.summary['step']}" if self.started else "during setup"
        if isinstance(err, KeyboardInterrupt):
            status, text = "interrupted", f"interrupted ({err or 'Ctrl-C'}) {where}"
        elif isinstance(err, SystemExit):
            status, text = "interrupted", f"job exited (code {err.code}) {where}"
        elif isinstance(err, Diverged):  # the same settings diverge again: a rerun skips it (zo.checkpoint)
            status, text = "diverged", str(err)
        elif isinstance(err, torch.OutOfMemoryError):
            first = str(err).strip().splitlines()[0][:160]
            status, text = "failed", (f"out of memory {where} ({first}): lower train.batch_size or "
                                      "train.eval_batch_size, or use model.dtype=bf16")  # fmt: skip
        elif self._one_line(err):
            status, text = "failed", str(err)
        else:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            status, text = "failed", f"{type(err).__name__} {where}: {first}"
        line = text + self._hint()
        self._end(status, line)
        return line

    @staticmethod
    def _one_line(err: BaseException) -> bool:
        from data import DataError

        return isinstance(err, (ZOError, DataError, torch.OutOfMemoryError))

    def _hint(self) -> str:
        """How to go on from here: the resume command, or how to start over."""
        if (self.out_dir / NAME).exists():
            return f"; resume with: {self.command}"
        if self.started and trained_rows(self.out_dir / "metrics.jsonl"):
            return "; there is no checkpoint to resume from (ckpt.every=N keeps one): force=true starts over"
        return ""

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.log is not None:
            self.log.close()
        self.summary["s_per_step"] = statistics.median(self.times) if self.times else None
        if self.devices:
            self.summary["peak_mem_mib"] = peak_memory_mib(self.devices)
