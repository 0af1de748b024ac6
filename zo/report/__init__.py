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

`runs` reads, `numbers` computes, `plots` draws, `cli` writes them all.
"""

from zo.report.cli import main, report
from zo.report.numbers import alignment_data, curves_data, heatmap_data, runs_table, write_csv
from zo.report.plots import plot_alignment, plot_curves, plot_heatmaps
from zo.report.runs import ReportError, Run, collect_runs, load_run, wandb_runs

__all__ = [
    "ReportError",
    "Run",
    "alignment_data",
    "collect_runs",
    "curves_data",
    "heatmap_data",
    "load_run",
    "main",
    "plot_alignment",
    "plot_curves",
    "plot_heatmaps",
    "report",
    "runs_table",
    "wandb_runs",
    "write_csv",
]
