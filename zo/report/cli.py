"""Turn a sweep into tables and figures: `python -m zo.report <sweep_dir>`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from zo.report.numbers import (
    alignment_data,
    curves_data,
    default_series,
    evaluated,
    heatmap_data,
    runs_table,
    series_data,
    write_csv,
)
from zo.report.plots import plot_alignment, plot_curves, plot_heatmaps, pyplot
from zo.report.runs import (
    DEFAULT_STEPS,
    PANEL_FREE,
    ReportError,
    Run,
    collect_runs,
    finished_only,
    wandb_runs,
)
from zo.report.speedup import counts_forwards, speedup_data
from zo.report.table import markdown, paper_table, write_table

RUN_COLUMNS = ("optimizer", "theta", "beta", "lr", "seed", "task", "status", "final", "best",
               "test_at_best_dev")  # fmt: skip
SPEEDUP_COLUMNS = ("panel", "label", "target", "final", "{unit}", "baseline_{unit}", "speedup", "speedup_lo",
                   "speedup_hi", "reached")  # fmt: skip


def print_table(rows: list[dict], cols: Sequence[str], title: str) -> None:
    """A table's headline columns on the terminal; its CSV has all of them."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
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
    series: Sequence[str] | None = None,
    baseline: str | None = None,
    smooth: int = 1,
) -> list[Path]:
    """Write every table and figure the runs support (CSV + PNG + SVG); returns the folder's files.

    `series`: the evaluated series drawn as curves_<series>.* (None: `default_series`, where logged).
    `baseline`: the optimizer whose final eval loss is speedup.csv's target (None: mezo, where it ran).
    `smooth`: the speedup's curves are trailing means over this many evaluations (`zo.report.speedup`).
    A series or baseline asked for by name that the runs do not have is an error, before anything is written.
    """
    drawn = {name: series_data(runs, [name]) for name in series or default_series(runs)}
    if series and (missing := [name for name, curves in drawn.items() if not curves]):
        raise ReportError(
            f"no run evaluated {', '.join(missing)}; evaluations log: {', '.join(evaluated(runs))}"
        )
    speedups = speedup_data(runs, baseline or "mezo", smooth=smooth)
    # The same on the dev split where it was scored: a task whose dev split is drawn from its train
    # set (SST-2's) can show progress on dev that its test split shows late or not at all.
    dev_speedups = (
        speedup_data(runs, baseline or "mezo", series="dev_eval_loss", smooth=smooth) if speedups else []
    )
    # And counted in forwards, where every run logged them: a method of 9 forwards a step that needs
    # a third of MeZO's steps has spent more, not less.
    in_forwards = bool(speedups) and counts_forwards(runs)
    forward_speedups = (
        speedup_data(runs, baseline or "mezo", smooth=smooth, unit="forwards") if in_forwards else []
    )
    dev_forward_speedups = (
        speedup_data(runs, baseline or "mezo", series="dev_eval_loss", smooth=smooth, unit="forwards")
        if in_forwards and dev_speedups
        else []
    )
    if baseline and not speedups:
        raise ReportError(
            f"no finished {baseline} run with an eval_loss: nothing sets the target of speedup.csv"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows = runs_table(runs, steps, target)
    write_csv(out / "runs.csv", rows)
    cols = [*RUN_COLUMNS, *(f"at_{s}" for s in steps), "steps_to_target", "s_per_step", "peak_mem_mib"]
    print_table(rows, cols, f"{len(runs)} runs")
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
    for name, curves in drawn.items():
        if curves:
            write_csv(out / f"curves_{name}.csv", [p for c in curves for p in c.points()])
            figures.append(plot_curves(curves, out, f"curves_{name}"))
        # Against forwards too, where every run counted them: a step of FZOO is 9 of MeZO's 2.
        if curves and counts_forwards(runs):
            spent = series_data(runs, [name], x="forwards")
            write_csv(out / f"curves_{name}_forwards.csv", [p for c in spent for p in c.points()])
            figures.append(plot_curves(spent, out, f"curves_{name}_forwards"))
    aligned, inv_d = alignment_data(runs)
    if aligned:
        write_csv(
            out / "alignment.csv", [{**p, "inv_d": inv_d.get(c.panel)} for c in aligned for p in c.points()]
        )
        figures.append(plot_alignment(aligned, inv_d, out))
    tables = (("speedup.csv", speedups, "steps"), ("speedup_dev.csv", dev_speedups, "steps"),
              ("speedup_forwards.csv", forward_speedups, "forwards"),
              ("speedup_dev_forwards.csv", dev_forward_speedups, "forwards"))  # fmt: skip
    for name, table, unit in tables:
        if table:
            write_csv(out / name, table)
            seeds = [k for k in dict.fromkeys(k for r in table for k in r) if k.startswith(f"{unit}_seed")]
            head = table[0]
            window = f", trailing means of {smooth} evaluations" if smooth > 1 else ""
            title = (
                f"{unit} to {head['baseline']}'s final {head['series']}{window}; "
                "speedup with a 95% bootstrap interval"
            )
            columns = [c.format(unit=unit) for c in SPEEDUP_COLUMNS]
            print_table(table, [*columns, *seeds], title)
    for fig in figures:
        pyplot().close(fig)
    return sorted(out.iterdir())


def table_only(runs: list[Run], out: Path) -> list[Path]:
    """`--table`: the paper's layout as table.md and table.tex, the Markdown printed."""
    table = paper_table(runs_table(runs))
    if table is None:
        raise ReportError("no finished run with a score: nothing to put in the table")
    paths = write_table(table, out)
    print(markdown(table))
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    import zo.report

    parser = argparse.ArgumentParser(
        prog="python -m zo.report",
        description=zo.report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the docstring's file list as written
    )
    add = parser.add_argument
    add("sweep_dir", nargs="?", type=Path, help="folder holding the sweep's run folders (any depth)")
    add("--step", type=int, nargs="+", default=list(DEFAULT_STEPS), help="steps of the at_N columns")
    add("--target", type=float, help="metric value for the steps_to_target column")
    add("--metric", help="metric to report (default: each run's own: accuracy, f1 or loss)")
    add("--heatmap-step", type=int, help="step of the heatmap values (default: the final evaluation)")
    series = "evaluated series drawn as curves_NAME.* (default: eval_loss and the metric, where logged)"
    add("--series", nargs="+", metavar="NAME", help=series)
    baseline = "optimizer whose final eval_loss is speedup.csv's target (default: mezo, where it ran)"
    add("--baseline", metavar="OPTIMIZER", help=baseline)
    smooth = (
        "speedup on trailing means of K evaluations, the target too (default 1: the evaluations as logged)"
    )
    add("--smooth", type=int, default=1, metavar="K", help=smooth)
    lines = (
        "override keys a panel's lines may also differ in, besides optimizer, θ and β (e.g. lr_point: "
        "a study whose methods each run their own η grid, against one baseline)"
    )
    add("--lines", nargs="+", default=[], metavar="KEY", help=lines)
    finished = "only the runs that finished: a sweep still running, reported on its finished seeds"
    add("--finished", action="store_true", help=finished)
    add(
        "--table",
        action="store_true",
        help="only the paper's table: optimizers × tasks, mean ± std over seeds",
    )
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
        if args.finished:
            runs = finished_only(runs)
        if args.lines:
            runs = [replace(run, panel_free=(*PANEL_FREE, *args.lines)) for run in runs]
        if args.table:
            written = table_only(runs, args.out)
        else:
            written = report(
                runs,
                args.out,
                args.step,
                args.target,
                args.heatmap_step,
                args.series,
                args.baseline,
                args.smooth,
            )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(runs)} runs → {args.out}: {', '.join(p.name for p in written)}")
    return 0
