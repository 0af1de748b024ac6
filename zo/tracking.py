"""Where a run's numbers go: metrics.jsonl and summary.json on disk, W&B, and the terminal.

Local files are the source of truth (the report reads them, resume truncates
them); W&B mirrors the same rows. Each row is flushed as written, so a killed
job keeps everything up to its last step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from zo import ZOError


def write_json(path: Path, data: dict) -> None:
    """Replace `path` atomically: a crash leaves either the old or the new file, never half of one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


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

        self.run = wandb.init(
            project=cfg.log.project,
            mode=cfg.log.wandb,
            dir=str(out_dir),
            id=run_id,
            resume="allow",
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, row: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def finish(self, summary: dict) -> None:
        if self.run is not None:
            for key in ("status", "s_per_step", "peak_mem_mib"):
                self.run.summary[key] = summary.get(key)
            self.run.finish(exit_code=0 if summary.get("status") == "finished" else 1)


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
                TextColumn("loss {task.fields[loss]}  {task.fields[metric]} {task.fields[last]}"),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task(
                "zo", total=total, completed=start, loss="—", metric=metric, last="—"
            )
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

    metric = summary["metric"]

    def fmt(block: dict | None) -> str:
        return "—" if not block or metric not in block else f"{block[metric]:.4f}"

    table = Table(title=f"zo-runner: {summary['status']}", show_header=False)
    table.add_row(f"{metric} before", fmt(summary.get("initial")))
    table.add_row(f"{metric} after", fmt(summary.get("final")))
    table.add_row("steps", f"{summary['step']} / {summary['steps']}")
    s = summary.get("s_per_step")
    table.add_row("s/step (median)", "—" if s is None else f"{s:.4f}")
    table.add_row("peak memory", f"{summary.get('peak_mem_mib', 0):.0f} MiB ({summary['device']})")
    table.add_row("output", summary["output_dir"])
    Console().print(table)
