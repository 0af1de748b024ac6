"""Runs as the report sees them, read from run folders or from W&B."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zo.overrides import override_key

SEED_KEYS = ("train.seed", "task.data_seed")
CONE_SERIES = {"optimizer.theta": "theta", "optimizer.beta": "beta_t"}  # cone key: the series it logs as
CONE_KEYS = tuple(CONE_SERIES)
PANEL_FREE = (*CONE_KEYS, "optimizer")  # what the lines (or cells) of one panel may differ in
DEFAULT_STEPS = (1000, 3000, 6000)  # the ConMeZO paper's Table 11 checkpoints
SHORT = {"optimizer.theta": "θ", "optimizer.beta": "β", "optimizer.lr": "η", "optimizer.eps": "λ"}


class ReportError(RuntimeError):
    """Nothing to report on, or a source that cannot be read; printed as a one-line error."""


@dataclass
class Run:
    """One run, whatever it was read from: its settings, its logged rows and how it ended."""

    name: str
    config: dict
    overrides: list[str]
    status: str
    rows: list[dict]
    metric: str
    s_per_step: float | None = None
    peak_mem_mib: float | None = None
    # Override keys this run's panel may hold other values of, as lines or cells (`numbers.panels`);
    # a study whose methods each have their own η grid adds its grid key (`--lines lr_point`).
    panel_free: tuple[str, ...] = PANEL_FREE
    evals: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.evals = [r for r in self.rows if self._is_eval(r)]

    def _is_eval(self, row: dict) -> bool:
        """Rows that hold an evaluation of the metric.

        When the metric is "loss" (the quadratic), training rows carry a "loss" too: the mean of
        the two perturbed values, biased by λ². metrics.jsonl marks evaluated rows; W&B history
        does not, and there the evaluations are the steps the runner evaluates at: 0, every
        train.eval_every, and the last.
        """
        if row.get(self.metric) is None:
            return False
        if "evaluated" in row or self.metric != "loss" or "lr" not in row:
            return True
        every, step = self.get("train.eval_every") or 0, row["step"]
        return step == self.get("train.steps") or bool(every and step % every == 0)

    def get(self, dotted: str) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    @property
    def lower_is_better(self) -> bool:
        return is_loss(self.metric)

    @property
    def key(self) -> tuple[str, ...]:
        """The overrides that define the run's setting: everything but its seeds."""
        return tuple(sorted(o for o in self.overrides if override_key(o) not in SEED_KEYS))

    def uses(self, key: str) -> bool:
        """Whether the optimizer uses θ or β (a key of CONE_SERIES): the runner logs null otherwise.
        Before its first training row a run cannot tell; it counts as using the ones its overrides
        set (a heatmap's grid point keeps its θ and β), not the defaults every optimizer carries."""
        train = [r for r in self.rows if "lr" in r]
        if not train:
            return any(override_key(o) == key for o in self.overrides)
        return any(r.get(CONE_SERIES[key]) is not None for r in train)

    def value_at(self, step: int | None, series: str | None = None) -> float | None:
        """`series` (default: the metric) of the last evaluation at or before `step` (None = the final one).

        A run that has not logged `step` yet has no value there: its last evaluation would
        pass off an earlier, worse number as the one at `step`.
        """
        series = series or self.metric
        if step is None:
            step = self.get("train.steps")
            last = self.evals[-1] if self.evals else None
            return last.get(series) if last and last["step"] == step else None
        if not self.rows or self.rows[-1]["step"] < step:
            return None
        before = [r for r in self.evals if r["step"] <= step]
        return before[-1].get(series) if before else None

    @property
    def selected_on(self) -> str | None:
        """What picks the best evaluation: the dev metric where the run scored dev, the objective
        itself on the quadratic, else nothing (a best test score would not be a held-out number)."""
        dev = f"dev_{self.metric}"
        if any(dev in r for r in self.evals):
            return dev
        return self.metric if self.metric == "loss" else None

    def best(self) -> dict | None:
        """The evaluation row with the best `selected_on` value (its `metric` is the test score there)."""
        key = self.selected_on
        rows = [r for r in self.evals if key is not None and key in r]
        if not rows:
            return None
        pick = min if self.lower_is_better else max
        return pick(rows, key=lambda r: r[key])

    def steps_to(self, target: float, series: str | None = None) -> int | None:
        """First evaluated step whose `series` (default: the metric) reaches `target` (≤ for losses,
        ≥ otherwise)."""
        series = series or self.metric
        for row in self.evals:
            value = row.get(series)
            if value is not None and ((value <= target) if is_loss(series) else (value >= target)):
                return row["step"]
        return None

    def forwards_at(self, steps: Sequence[int]) -> list[float] | None:
        """The forwards the run had spent by each of `steps`: the runner's per-step `forwards` (in
        batches) summed from step 1. None for a run logged before the runner counted them (a run
        that has not trained yet has spent none, whenever it was logged)."""
        per_step = {r["step"]: r.get("forwards") for r in self.rows if r["step"] >= 1}
        if None in per_step.values():
            return None
        spent, total = {0: 0.0}, 0.0
        for step in sorted(per_step):
            total += per_step[step]
            spent[step] = total
        return [spent[s] for s in steps]

    def spent(self, steps: Sequence[int]) -> list[float]:
        """`forwards_at`, for a report that needs them: a run that did not log them is an error."""
        forwards = self.forwards_at(steps)
        if forwards is None:
            raise ReportError(f"{self.name} logged no forwards (a run from before the runner counted them)")
        return forwards

    def mean_align_cos2(self) -> float | None:
        values = [r["align_cos2"] for r in self.rows if r.get("align_cos2") is not None]
        return statistics.fmean(values) if values else None


def is_loss(series: str) -> bool:
    """Whether lower is better: losses (eval_loss, the quadratic's loss) against scores (accuracy, f1)."""
    return series.endswith("loss")


def infer_metric(rows: list[dict], summary: dict) -> str:
    """The run's headline metric: what the runner recorded, else the first one its rows carry."""
    if summary.get("metric"):
        return summary["metric"]
    keys = {k for r in rows for k in r}
    return next((m for m in ("accuracy", "f1") if m in keys), "loss")


# ---- reading runs ------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    """metrics.jsonl rows; a half-written last line (a killed job) is dropped, not fatal."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else None


def load_run(folder: Path, root: Path, metric: str | None = None) -> Run:
    """A run folder as the runner leaves it; summary.json first, Hydra's files where it is missing."""
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else {}
    rows = read_rows(folder / "metrics.jsonl")
    config = (
        summary.get("config") or read_yaml(folder / "config.yaml") or read_yaml(folder / ".hydra/config.yaml")
    )
    overrides = summary.get("overrides") or read_yaml(folder / ".hydra/overrides.yaml") or []
    return Run(
        name=str(folder.relative_to(root)),
        config=config or {},
        overrides=[str(o) for o in overrides],
        status=summary.get("status", "unknown"),
        rows=rows,
        metric=metric or infer_metric(rows, summary),
        s_per_step=summary.get("s_per_step"),
        peak_mem_mib=summary.get("peak_mem_mib"),
    )


def collect_runs(sweep_dir: Path, metric: str | None = None) -> list[Run]:
    """Every folder under `sweep_dir` (any depth, itself included) that holds a run's files."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder")
    folders = {p.parent for name in ("summary.json", "metrics.jsonl") for p in sweep_dir.rglob(name)}
    if not folders:
        raise ReportError(f"no runs under {sweep_dir} (no summary.json or metrics.jsonl)")
    return [load_run(f, sweep_dir, metric) for f in sorted(folders)]


def finished_only(runs: list[Run]) -> list[Run]:
    """The runs whose summary says "finished": `--finished`, a report on a sweep still running.

    A method's mean curve covers only the steps all of its seeds logged, so one seed still at step
    300 cuts that method's curves, and its speedup, at step 300; leaving it out reports the seeds
    that are done on their whole horizon instead.
    """
    done = [r for r in runs if r.status == "finished"]
    if not done:
        statuses = ", ".join(sorted({r.status for r in runs}))
        raise ReportError(
            f"none of the {len(runs)} runs has finished (statuses: {statuses}); drop --finished"
        )
    return done


def wandb_runs(project: str, filters: dict | None = None, metric: str | None = None) -> list[Run]:
    """The same runs read back from W&B: config, summary, and the full history.

    The runner mirrors every metrics.jsonl row with `step` as W&B's step, and puts the
    overrides into the config and status/s_per_step/peak_mem_mib into the summary.
    """
    try:
        import wandb

        api_runs = list(wandb.Api(timeout=30).runs(project, filters=filters or {}))
        runs = []
        for r in api_runs:
            # one row per step: a resumed run may have logged a step twice; the later row counts
            by_step = {
                h["_step"]: {"step": h["_step"], **{k: v for k, v in h.items() if not k.startswith("_")}}
                for h in r.scan_history()
            }
            rows = [by_step[s] for s in sorted(by_step)]
            summary = dict(r.summary)
            config = dict(r.config)
            runs.append(
                Run(
                    name="/".join(r.path),
                    config=config,
                    overrides=[str(o) for o in config.get("overrides") or []],
                    status=summary.get("status") or {"crashed": "failed"}.get(r.state, r.state),
                    rows=rows,
                    metric=metric or infer_metric(rows, summary),
                    s_per_step=summary.get("s_per_step"),
                    peak_mem_mib=summary.get("peak_mem_mib"),
                )
            )
    except Exception as err:  # network, login, unknown project: all end the same way for a user
        raise ReportError(
            f"cannot read W&B project {project!r} ({type(err).__name__}: {err}); --from-wandb needs "
            "network access and a W&B login (WANDB_API_KEY); offline, report on the run folders instead"
        ) from err
    if not runs:
        raise ReportError(f"W&B project {project!r} has no runs matching {filters or {}}")
    return runs
