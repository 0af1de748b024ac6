"""Turn a sweep into tables and figures: `python -m zo.report <sweep_dir>`.

Reads every run folder under the sweep (or a W&B project with --from-wandb) and writes into
`--out` (default `<sweep_dir>/report`):

    runs.csv         one row per run: settings, status, final/best metric, metric at fixed steps,
                     steps to a target, s/step, peak memory, mean alignment cos²
    heatmap.*        ConMeZO θ × β → metric (mean over seeds), one panel per other setting
    curves.*         metric and training loss vs step, mean ± std over seeds, one line per setting
    curves_<name>.*  one evaluated series vs step, mean ± std over seeds: the test eval_loss and the
                     metric, where logged, unless `--series eval_loss dev_eval_loss ...` names others
    curves_<name>_forwards.*  the same against the forwards spent by each evaluation, where every
                     run logged them
    alignment.*      cos²(momentum, gradient) vs step against each panel's 1/d (a random direction)
    speedup.csv      steps each method needs to reach the baseline's final test eval_loss (mean over
                     its seeds; `--baseline`, default mezo), for the mean curve and per seed, and the
                     speedup baseline steps / method steps with a 95% bootstrap interval over seeds
                     (`zo.report.speedup` says exactly how), and the metric on test and dev at the
                     evaluation where the mean curve got there; printed as a table too;
                     `--smooth K` measures on trailing means of K evaluations instead
    speedup_dev.csv  the same on the dev split's eval loss, where the runs scored one
    speedup_forwards.csv  speedup.csv counted in forwards (each run's per-step `forwards` summed),
                     where every run logged them: what the methods cost, not how many steps they took
    speedup_dev_forwards.csv  the same on the dev split's eval loss
    table.md, .tex   with `--table` (and nothing else): the paper's Tables 1/2 layout, optimizers ×
                     tasks, mean ± std over seeds of each run's test score at its best dev step
                     (else its final score), as Markdown and LaTeX (`zo.report.table`)

`--finished` reports on the finished runs only: on a sweep still running, a seed that is not done
would cut its method's mean curves (and speedup) short at its last evaluation.

Every figure has a panel per setting other than optimizer, θ and β (a panel per task in a
task × optimizer study, like the convergence sweep) and a line per optimizer setting.
`--lines KEY` lets a panel's lines differ in KEY too: the leaders study's `--lines lr_point` puts every
method's η grid in MeZO's panel, so each (method, η) gets a speedup against the one MeZO target.

Numbers are computed first (`runs_table`, `heatmap_data`, `curves_data`, `series_data`,
`alignment_data`, `speedup_data`) and written as CSV; the plot functions only draw those numbers,
so a figure can always be checked against its CSV. Runs are grouped by their Hydra overrides minus
the seeds, which is exactly what a sweep varies; labels show only the overrides that differ between
groups.

`runs` reads, `numbers` and `speedup` compute, `plots` draws, `cli` writes them all.
"""

from zo.report.cli import main, report
from zo.report.numbers import (
    alignment_data,
    curves_data,
    heatmap_data,
    runs_table,
    series_data,
    write_csv,
)
from zo.report.plots import plot_alignment, plot_curves, plot_heatmaps
from zo.report.runs import ReportError, Run, collect_runs, finished_only, load_run, wandb_runs
from zo.report.speedup import counts_forwards, speedup_data

__all__ = [
    "ReportError",
    "Run",
    "alignment_data",
    "collect_runs",
    "counts_forwards",
    "curves_data",
    "finished_only",
    "heatmap_data",
    "load_run",
    "main",
    "plot_alignment",
    "plot_curves",
    "plot_heatmaps",
    "report",
    "runs_table",
    "series_data",
    "speedup_data",
    "wandb_runs",
    "write_csv",
]
