"""Every number a report shows, computed before anything is drawn (tables, heatmap cells, curves)."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zo.overrides import override_key
from zo.report.runs import CONE_KEYS, DEFAULT_STEPS, SHORT, Run


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def varying_keys(keys: Iterable[tuple[str, ...]]) -> set[str]:
    """Override keys not set identically in every group: the ones worth showing in a label."""
    groups = [set(k) for k in keys]
    shared = set.intersection(*groups) if groups else set()
    return {override_key(o) for g in groups for o in g - shared}


def describe(overrides: Iterable[str], show: set[str]) -> str:
    """`θ=1.2 β=0.9 task=trec` from the overrides whose key is in `show` (the optimizer aside)."""
    parts = []
    for o in overrides:
        key, value = override_key(o), o.partition("=")[2]
        if key in show and key != "optimizer":
            parts.append(f"{SHORT.get(key, key.rsplit('.', 1)[-1])}={value}")
    return " ".join(parts)


def label(run: Run, show: set[str]) -> str:
    """Optimizer name plus the distinguishing overrides; θ and β only where the optimizer uses them."""
    unused = {k for k in CONE_KEYS if not run.uses(k)}
    return " ".join(p for p in (run.get("optimizer.name") or "run", describe(run.key, show - unused)) if p)


def groups(runs: Iterable[Run]) -> dict[tuple[str, ...], list[Run]]:
    """Runs that differ only in their seeds."""
    out: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        out[run.key].append(run)
    return dict(out)


def panels(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in optimizer, θ, β and seeds (`Run.panel_free`), by title: one figure panel each.

    A grid of η × θ × β gets a panel per η with a line (or heatmap cell) per θ, β; a table of
    tasks × optimizers gets a panel per task. The title names what sets the panels apart, or
    the task when that is all there is.
    """
    by_key: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        by_key[tuple(o for o in run.key if override_key(o) not in run.panel_free)].append(run)
    show = varying_keys(by_key)
    return {describe(k, show) or str(m[0].get("task.name")): m for k, m in sorted(by_key.items())}


def runs_table(
    runs: list[Run], steps: Sequence[int] = DEFAULT_STEPS, target: float | None = None
) -> list[dict]:
    """One row per run: what it was, how it ended, and its metric at the checkpoints asked for."""
    table = []
    for run in runs:
        best = run.best()
        row = {
            "run": run.name,
            "overrides": " ".join(run.overrides),
            "optimizer": run.get("optimizer.name"),
            "theta": run.get("optimizer.theta") if run.uses("optimizer.theta") else None,
            "beta": run.get("optimizer.beta") if run.uses("optimizer.beta") else None,
            "lr": run.get("optimizer.lr"),
            "seed": run.get("train.seed"),
            "data_seed": run.get("task.data_seed"),
            "task": run.get("task.name"),
            "model": run.get("model.name"),
            "status": run.status,
            "step": run.rows[-1]["step"] if run.rows else 0,
            "steps": run.get("train.steps"),
            "metric": run.metric,
            "final": run.value_at(None),
            "selected_on": run.selected_on,
            "best": best[run.selected_on] if best else None,
            "best_step": best["step"] if best else None,
            "test_at_best_dev": best[run.metric] if best and run.selected_on != run.metric else None,
            **{f"at_{s}": run.value_at(s) for s in steps},
            "target": target,
            "steps_to_target": run.steps_to(target) if target is not None else None,
            "s_per_step": run.s_per_step,
            "peak_mem_mib": run.peak_mem_mib,
            "align_cos2_mean": run.mean_align_cos2(),
        }
        table.append(row)
    return table


@dataclass
class Heatmap:
    """θ × β grid of one setting: mean (and std, count) over seeds; None where no run landed."""

    facet: str
    metric: str
    thetas: list[float]
    betas: list[float]
    mean: list[list[float | None]]  # [theta index][beta index]
    std: list[list[float | None]]
    n: list[list[int]]

    def cells(self) -> list[dict]:
        return [
            {
                "facet": self.facet,
                "metric": self.metric,
                "theta": t,
                "beta": b,
                "mean": self.mean[i][j],
                "std": self.std[i][j],
                "n": self.n[i][j],
            }
            for i, t in enumerate(self.thetas)
            for j, b in enumerate(self.betas)
        ]


def heatmap_data(runs: list[Run], step: int | None = None) -> list[Heatmap]:
    """ConMeZO runs' metric at `step` (None = final) on a θ × β grid, one grid per other setting.

    Everything else a sweep varies (learning rate, task, ...) makes a separate panel (see
    `panels`), so a cell never averages over anything but seeds. A panel whose runs share a
    single (θ, β) has no grid and is left out.
    """
    maps = []
    for facet, members in panels(r for r in runs if r.get("optimizer.name") == "conmezo").items():
        thetas = sorted({r.get("optimizer.theta") for r in members})
        betas = sorted({r.get("optimizer.beta") for r in members})
        if len(thetas) * len(betas) == 1:
            continue
        values: dict[tuple[int, int], list[float]] = defaultdict(list)
        for r in members:
            v = r.value_at(step)
            if v is not None:
                values[thetas.index(r.get("optimizer.theta")), betas.index(r.get("optimizer.beta"))].append(v)
        stats = {ij: mean_std(v) for ij, v in values.items()}
        grid = [[(i, j) for j in range(len(betas))] for i in range(len(thetas))]
        maps.append(
            Heatmap(
                facet=facet,
                metric=members[0].metric,
                thetas=thetas,
                betas=betas,
                mean=[[stats[ij][0] if ij in stats else None for ij in row] for row in grid],
                std=[[stats[ij][1] if ij in stats else None for ij in row] for row in grid],
                n=[[len(values.get(ij, [])) for ij in row] for row in grid],
            )
        )
    return maps


@dataclass
class Curve:
    """One group's series vs step: mean ± std over the seeds that logged each step."""

    label: str
    panel: str
    series: str  # the metric's name, "train_loss" or "align_cos2"
    steps: list[float]  # the x axis, in `x`'s unit
    mean: list[float]
    std: list[float]
    n: list[int]
    x: str = "step"  # what `steps` count: "step", or "forwards" (those spent by each evaluation)

    def points(self) -> list[dict]:
        head = {"panel": self.panel, "label": self.label, "series": self.series}
        return [
            {**head, self.x: s, "mean": m, "std": d, "n": k}
            for s, m, d, k in zip(self.steps, self.mean, self.std, self.n, strict=True)
        ]


def _curve(
    members: list[Run],
    name: str,
    panel: str,
    series: str,
    points: Callable[[Run], Iterable[tuple[float, float]]],
    x: str = "step",
) -> Curve:
    """Aggregate the (x, value) points of each run x by x."""
    by_step: dict[float, list[float]] = defaultdict(list)
    for run in members:
        for step, value in points(run):
            by_step[step].append(value)
    steps = sorted(by_step)
    stats = [mean_std(by_step[s]) for s in steps]
    return Curve(
        label=name,
        panel=panel,
        series=series,
        steps=steps,
        mean=[m for m, _ in stats],
        std=[d for _, d in stats],
        n=[len(by_step[s]) for s in steps],
        x=x,
    )


def _values(key: str, rows_of: Callable[[Run], list[dict]]) -> Callable[[Run], Iterable[tuple[int, float]]]:
    return lambda run: ((r["step"], r[key]) for r in rows_of(run) if r.get(key) is not None)


def lines(runs: list[Run]) -> list[tuple[str, str, list[Run]]]:
    """(label, panel, runs) per group of seeds; labels show what differs within the panel."""
    out = []
    for title, members in panels(runs).items():
        grouped = groups(members)
        show = varying_keys(grouped)
        out += [(label(m[0], show), title, m) for m in grouped.values()]
    return out


def _evaluated(members: list[Run], name: str, panel: str, series: str, x: str = "step") -> Curve:
    """A series logged at the evaluations (the metric, eval_loss, dev_accuracy, ...), against the
    step or (x = "forwards") the forwards spent by then (every run must have logged them)."""
    if x == "step":
        return _curve(members, name, panel, series, _values(series, lambda r: r.evals))

    def spent(run: Run) -> Iterable[tuple[float, float]]:
        rows = [r for r in run.evals if r.get(series) is not None]
        return zip(run.spent([r["step"] for r in rows]), (r[series] for r in rows), strict=True)

    return _curve(members, name, panel, series, spent, x)


def curves_data(runs: list[Run]) -> list[Curve]:
    """Per group: the metric at its evaluations and, unless the metric is the loss, the training loss."""
    curves = []
    for name, panel, members in lines(runs):
        metric = members[0].metric
        curves.append(_evaluated(members, name, panel, metric))
        if metric != "loss":
            train = _values("loss", lambda r: [x for x in r.rows if "lr" in x])
            curves.append(_curve(members, name, panel, "train_loss", train))
    return [c for c in curves if c.steps]


def evaluated(runs: Iterable[Run]) -> list[str]:
    """The series an evaluation logs (test and dev scores): the step-0 row holds nothing else."""
    keys = {k for run in runs for r in run.rows if r["step"] == 0 for k in r}
    return sorted(keys - {"step", "evaluated"})


def default_series(runs: Iterable[Run]) -> list[str]:
    """What `series_data` draws unless told otherwise: the test eval_loss and each run's headline metric."""
    return list(dict.fromkeys(["eval_loss", *(run.metric for run in runs)]))


def series_data(runs: list[Run], names: Sequence[str], x: str = "step") -> list[Curve]:
    """Per evaluated series (test `eval_loss`, `accuracy`, dev `dev_eval_loss`, ...) and group: its
    values at the evaluations, mean ± std over seeds, against the step or (x = "forwards") the
    forwards spent; a series a group never logged is left out."""
    curves = [_evaluated(m, name, panel, series, x) for series in names for name, panel, m in lines(runs)]
    return [c for c in curves if c.steps]


def alignment_data(runs: list[Run]) -> tuple[list[Curve], dict[str, float]]:
    """cos² curves per group, and per panel 1/d: the expected cos² of a random direction.

    1/d belongs to a panel, not to the report: panels may differ in the model, hence in d.
    """
    cos2 = _values("align_cos2", lambda r: r.rows)
    curves, inv_d = [], defaultdict(list)
    for name, panel, members in lines(runs):
        curve = _curve(members, name, panel, "align_cos2", cos2)
        if curve.steps:
            curves.append(curve)
            inv_d[panel] += [r["inv_d"] for run in members for r in run.rows if r.get("inv_d") is not None]
    return curves, {panel: statistics.fmean(d) for panel, d in inv_d.items() if d}


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
