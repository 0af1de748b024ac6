"""Turn a sweep into tables and figures: `python -m zo.report <sweep_dir>`.

Reads every run folder under the sweep (or a W&B project with --from-wandb) and writes into
`--out` (default `<sweep_dir>/report`):

    runs.csv        one row per run: settings, status, final/best metric, metric at fixed steps,
                    steps to a target, s/step, peak memory, mean alignment cos²
    heatmap.*       ConMeZO θ × β → metric (mean over seeds), one panel per other setting
    curves.*        metric and training loss vs step, mean ± std over seeds, one line per setting
    alignment.*     cos²(momentum, gradient) vs step against the 1/d of a random direction

Numbers are computed first (`runs_table`, `heatmap_data`, `curves_data`, `alignment_data`) and
written as CSV; the plot functions only draw those numbers, so a figure can always be checked
against its CSV. Runs are grouped by their Hydra overrides minus the seeds, which is exactly
what a sweep varies; labels show only the overrides that differ between groups.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED_KEYS = ("train.seed", "task.data_seed")
CONE_KEYS = ("optimizer.theta", "optimizer.beta")
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
    evals: list[dict] = field(init=False)

    def __post_init__(self) -> None:
        self.evals = [r for r in self.rows if self._is_eval(r)]

    def _is_eval(self, row: dict) -> bool:
        """Rows that hold an evaluation of the metric.

        When the metric is "loss" (the quadratic), training rows carry a "loss" too: the mean of
        the two perturbed values, biased by λ². There the evaluations are the steps the runner
        evaluates at: 0, every train.eval_every, and the last.
        """
        if row.get(self.metric) is None:
            return False
        if self.metric != "loss" or "lr" not in row:
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
        return self.metric.endswith("loss")

    @property
    def key(self) -> tuple[str, ...]:
        """The overrides that define the run's setting: everything but its seeds."""
        return tuple(sorted(o for o in self.overrides if override_key(o) not in SEED_KEYS))

    def uses(self, series: str) -> bool:
        """Whether the optimizer uses θ ('theta') or β ('beta_t'): the runner logs null otherwise."""
        train = [r for r in self.rows if "lr" in r]
        return not train or any(r.get(series) is not None for r in train)

    def value_at(self, step: int | None) -> float | None:
        """Metric of the last evaluation at or before `step` (None = the final evaluation).

        A run that has not logged `step` yet has no value there: its last evaluation would
        pass off an earlier, worse number as the one at `step`.
        """
        if step is None:
            step = self.get("train.steps")
            last = self.evals[-1] if self.evals else None
            return last[self.metric] if last and last["step"] == step else None
        if not self.rows or self.rows[-1]["step"] < step:
            return None
        before = [r for r in self.evals if r["step"] <= step]
        return before[-1][self.metric] if before else None

    def best(self) -> dict | None:
        if not self.evals:
            return None
        pick = min if self.lower_is_better else max
        return pick(self.evals, key=lambda r: r[self.metric])

    def steps_to(self, target: float) -> int | None:
        """First evaluated step whose metric reaches `target` (≤ for losses, ≥ otherwise)."""
        for row in self.evals:
            value = row[self.metric]
            if (value <= target) if self.lower_is_better else (value >= target):
                return row["step"]
        return None

    def mean_align_cos2(self) -> float | None:
        values = [r["align_cos2"] for r in self.rows if r.get("align_cos2") is not None]
        return statistics.fmean(values) if values else None


def override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


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


# ---- numbers -----------------------------------------------------------------------------------


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
    unused = {k for k, series in zip(CONE_KEYS, ("theta", "beta_t"), strict=True) if not run.uses(series)}
    return " ".join(p for p in (run.get("optimizer.name") or "run", describe(run.key, show - unused)) if p)


def groups(runs: Iterable[Run]) -> dict[tuple[str, ...], list[Run]]:
    """Runs that differ only in their seeds."""
    out: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        out[run.key].append(run)
    return dict(out)


def panels(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in optimizer, θ, β and seeds, by title: one figure panel each.

    A grid of η × θ × β gets a panel per η with a line (or heatmap cell) per θ, β; a table of
    tasks × optimizers gets a panel per task. The title names what sets the panels apart, or
    the task when that is all there is.
    """
    by_key: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        by_key[tuple(o for o in run.key if override_key(o) not in PANEL_FREE)].append(run)
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
            "theta": run.get("optimizer.theta") if run.uses("theta") else None,
            "beta": run.get("optimizer.beta") if run.uses("beta_t") else None,
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
            "best": best[run.metric] if best else None,
            "best_step": best["step"] if best else None,
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
    steps: list[int]
    mean: list[float]
    std: list[float]
    n: list[int]

    def points(self) -> list[dict]:
        head = {"panel": self.panel, "label": self.label, "series": self.series}
        return [
            {**head, "step": s, "mean": m, "std": d, "n": k}
            for s, m, d, k in zip(self.steps, self.mean, self.std, self.n, strict=True)
        ]


def _curve(
    members: list[Run],
    name: str,
    panel: str,
    series: str,
    points: Callable[[Run], Iterable[tuple[int, float]]],
) -> Curve:
    """Aggregate the (step, value) points of each run step by step."""
    by_step: dict[int, list[float]] = defaultdict(list)
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
    )


def _values(key: str, rows_of: Callable[[Run], list[dict]]) -> Callable[[Run], Iterable[tuple[int, float]]]:
    return lambda run: ((r["step"], r[key]) for r in rows_of(run) if r.get(key) is not None)


def _lines(runs: list[Run]) -> list[tuple[str, str, list[Run]]]:
    """(label, panel, runs) per group of seeds; labels show what differs within the panel."""
    out = []
    for title, members in panels(runs).items():
        grouped = groups(members)
        show = varying_keys(grouped)
        out += [(label(m[0], show), title, m) for m in grouped.values()]
    return out


def curves_data(runs: list[Run]) -> list[Curve]:
    """Per group: the metric at its evaluations and, unless the metric is the loss, the training loss."""
    curves = []
    for name, panel, members in _lines(runs):
        metric = members[0].metric
        curves.append(_curve(members, name, panel, metric, _values(metric, lambda r: r.evals)))
        if metric != "loss":
            train = _values("loss", lambda r: [x for x in r.rows if "lr" in x])
            curves.append(_curve(members, name, panel, "train_loss", train))
    return [c for c in curves if c.steps]


def alignment_data(runs: list[Run]) -> tuple[list[Curve], float | None]:
    """cos² curves per group, and 1/d: the expected cos² of a random direction."""
    cos2 = _values("align_cos2", lambda r: r.rows)
    curves = [_curve(m, name, panel, "align_cos2", cos2) for name, panel, m in _lines(runs)]
    inv_d = [r["inv_d"] for run in runs for r in run.rows if r.get("inv_d") is not None]
    return [c for c in curves if c.steps], (statistics.fmean(inv_d) if inv_d else None)


# ---- writing -----------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    """pyplot on the Agg backend: reports are written on clusters without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> None:
    for ext in ("png", "svg"):
        fig.savefig(out / f"{stem}.{ext}", dpi=150)


def _wide(values: Iterable[float]) -> bool:
    """Positive values over more than two decades (a diverging run): drawn on a log scale."""
    v = [x for x in values if x == x]  # NaN aside
    return bool(v) and min(v) > 0 and max(v) / min(v) > 100


def _panel_axes(titles: list[str], rows_per_panel: int):
    """A grid of panels (at most 4 across), each `rows_per_panel` axes tall; returns fig, {title: axes}."""
    cols = min(len(titles), 4)
    grid_rows = -(-len(titles) // cols) * rows_per_panel
    fig, grid = _pyplot().subplots(
        grid_rows, cols, figsize=(4.5 * cols + 2.5, 3.2 * grid_rows), squeeze=False, layout="constrained"
    )
    axes = {}
    for k, title in enumerate(titles):
        row, col = divmod(k, cols)
        axes[title] = [grid[row * rows_per_panel + i][col] for i in range(rows_per_panel)]
        axes[title][0].set_title(title)
    for k in range(len(titles), grid_rows // rows_per_panel * cols):
        row, col = divmod(k, cols)
        for i in range(rows_per_panel):
            grid[row * rows_per_panel + i][col].set_visible(False)
    return fig, axes


def _colors(labels: Iterable[str]) -> dict[str, tuple]:
    """One colour per label, the same in every panel, so one legend serves the whole figure."""
    plt = _pyplot()
    names = sorted(set(labels))
    if len(names) <= 20:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        return {n: cmap(i) for i, n in enumerate(names)}
    cmap = plt.get_cmap("turbo")
    return {n: cmap(i / (len(names) - 1)) for i, n in enumerate(names)}


def _draw(ax, curve: Curve, color: tuple) -> None:
    import numpy as np

    mean, std = np.array(curve.mean), np.array(curve.std)
    ax.plot(curve.steps, mean, label=curve.label, color=color)
    ax.fill_between(curve.steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("step")


def _legend(fig, colors: dict[str, tuple], extra: Iterable = ()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=name) for name, c in colors.items()]
    fig.legend(handles=[*handles, *extra], loc="outside right upper", fontsize=7)


def plot_heatmaps(maps: list[Heatmap], out: Path, title: str = ""):
    """One annotated θ × β panel per setting (like ConMeZO Fig. 5); returns the figure."""
    import numpy as np
    from matplotlib.colors import LogNorm

    fig, axes = _panel_axes([h.facet for h in maps], 1)
    for h in maps:
        ax = axes[h.facet][0]
        grid = np.array([[np.nan if v is None else v for v in row] for row in h.mean], dtype=float)
        lower = h.metric.endswith("loss")
        norm = LogNorm() if lower and _wide(grid.ravel()) else None
        image = ax.imshow(grid, cmap="viridis_r" if lower else "viridis", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                r, g, b, _ = image.cmap(image.norm(v))
                ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"  # readable on the cell
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color=ink, fontsize=8)
        ax.set_xticks(range(len(h.betas)), [f"{b:g}" for b in h.betas])
        ax.set_yticks(range(len(h.thetas)), [f"{t:g}" for t in h.thetas])
        ax.set(xlabel="β", ylabel="θ", title=" ".join(p for p in (h.facet, title) if p))
        fig.colorbar(image, ax=ax, label=h.metric)
    _save(fig, out, "heatmap")
    return fig


def plot_curves(curves: list[Curve], out: Path):
    """Metric (top) and training loss (below it, when logged apart) vs step, a panel per setting."""
    with_train = any(c.series == "train_loss" for c in curves)
    fig, axes = _panel_axes(list(dict.fromkeys(c.panel for c in curves)), 2 if with_train else 1)
    colors = _colors(c.label for c in curves)
    for curve in curves:
        ax = axes[curve.panel][int(curve.series == "train_loss")]
        _draw(ax, curve, colors[curve.label])
        ax.set_ylabel(curve.series)
    for ax in (ax for column in axes.values() for ax in column):
        if _wide(y for line in ax.get_lines() for y in line.get_ydata()):
            ax.set_yscale("log")
    _legend(fig, colors)
    _save(fig, out, "curves")
    return fig


def plot_alignment(curves: list[Curve], inv_d: float | None, out: Path):
    """cos²(momentum, gradient) vs step against 1/d (like ConMeZO Fig. 6); returns the figure."""
    from matplotlib.lines import Line2D

    fig, axes = _panel_axes(list(dict.fromkeys(c.panel for c in curves)), 1)
    colors = _colors(c.label for c in curves)
    for curve in curves:
        _draw(axes[curve.panel][0], curve, colors[curve.label])
    random = "1/d (random direction)"
    for (ax,) in axes.values():
        if inv_d is not None:
            ax.axhline(inv_d, color="k", linestyle="--", linewidth=1, label=random)
        ax.set(yscale="log", ylabel="cos²")
    _legend(fig, colors, [Line2D([], [], color="k", linestyle="--", label=random)] if inv_d else [])
    _save(fig, out, "alignment")
    return fig


def print_table(rows: list[dict], steps: Sequence[int]) -> None:
    """The table's headline columns on the terminal; runs.csv has all of them."""
    from rich.console import Console
    from rich.table import Table

    cols = ["optimizer", "theta", "beta", "lr", "seed", "task", "status", "final", "best",
            *[f"at_{s}" for s in steps], "steps_to_target", "s_per_step", "peak_mem_mib"]  # fmt: skip
    table = Table(title=f"{len(rows)} runs")
    for col in cols:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(row.get(col)) for col in cols))
    console = Console()
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console.width = 200
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(
    runs: list[Run],
    out: Path,
    steps: Sequence[int] = DEFAULT_STEPS,
    target: float | None = None,
    heatmap_step: int | None = None,
) -> list[Path]:
    """Write every table and figure the runs support (CSV + PNG + SVG); returns the folder's files."""
    out.mkdir(parents=True, exist_ok=True)
    rows = runs_table(runs, steps, target)
    write_csv(out / "runs.csv", rows)
    print_table(rows, steps)
    figures = []
    maps = heatmap_data(runs, heatmap_step)
    if maps:
        write_csv(out / "heatmap.csv", [c for h in maps for c in h.cells()])
        figures.append(
            plot_heatmaps(maps, out, title="final" if heatmap_step is None else f"step {heatmap_step}")
        )
    curves = curves_data(runs)
    if curves:
        write_csv(out / "curves.csv", [p for c in curves for p in c.points()])
        figures.append(plot_curves(curves, out))
    aligned, inv_d = alignment_data(runs)
    if aligned:
        write_csv(out / "alignment.csv", [{**p, "inv_d": inv_d} for c in aligned for p in c.points()])
        figures.append(plot_alignment(aligned, inv_d, out))
    for fig in figures:
        _pyplot().close(fig)
    return sorted(out.iterdir())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zo.report", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("sweep_dir", nargs="?", type=Path, help="folder holding the sweep's run folders (any depth)")
    add("--step", type=int, nargs="+", default=list(DEFAULT_STEPS), help="steps of the at_N columns")
    add("--target", type=float, help="metric value for the steps_to_target column")
    add("--metric", help="metric to report (default: each run's own: accuracy, f1 or loss)")
    add("--heatmap-step", type=int, help="step of the heatmap values (default: the final evaluation)")
    add("--out", type=Path, help="output folder (default: <sweep_dir>/report)")
    add("--from-wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead of run folders")
    add("--wandb-filters", type=json.loads, help='W&B run filters as JSON: \'{"config.task.name": "trec"}\'')
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.from_wandb is None):
        parser.error("give either a sweep folder or --from-wandb ENTITY/PROJECT")
    if args.out is None:
        wandb_out = Path("outputs/reports") / str(args.from_wandb).replace("/", "_")
        args.out = args.sweep_dir / "report" if args.sweep_dir else wandb_out
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.from_wandb:
            runs = wandb_runs(args.from_wandb, args.wandb_filters, args.metric)
        else:
            runs = collect_runs(args.sweep_dir, args.metric)
        written = report(runs, args.out, args.step, args.target, args.heatmap_step)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(runs)} runs → {args.out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
