"""zo.report on a sweep written by hand: every number in every CSV and figure is checked."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import QUAD, cli
from zo import report
from zo.report import ReportError, Run, collect_runs, curves_data, heatmap_data, runs_table

THETAS = (1.2, 1.5)
BETAS = (0.9, 0.99)
SEEDS = (0, 1)
STEPS, EVAL_EVERY, ALIGN_EVERY = 100, 20, 50
EVAL_STEPS = range(0, STEPS + 1, EVAL_EVERY)


def accuracy(theta: float | None, beta: float | None, seed: int, step: int) -> float:
    """Known, distinct values: linear in step, faster for larger θ + β, shifted per seed."""
    speed = 1.0 + (theta or 0.0) + (beta or 0.0)
    return 0.2 + step / 1000 * speed + 0.01 * seed


def dev_accuracy(step: int) -> float:
    """Dev peaks at step 60 for every run, while test keeps rising: selection must follow dev."""
    return 0.5 - abs(step - 60) / 1000


def train_loss(seed: int, step: int) -> float:
    return 2.0 - step / 100 + 0.1 * seed


def cos2(theta: float | None, seed: int, step: int) -> float:
    return (theta or 0.01) * 1e-2 * (seed + 1) * step / STEPS


RATES = (0.004, 0.005, 0.0075)  # eval loss per step of seeds 0, 1, 2 at speed 1


def eval_loss(speed: float, seed: int, step: int) -> float:
    """Test eval loss falling linearly from 2 at speed × the seed's rate: MeZO (speed 1) ends at
    1.6, 1.5, 1.25 on seeds 0, 1, 2, so its mean final, the speedup's target, is 1.45."""
    return 2.0 - speed * RATES[seed] * step


def dev_loss(dev_speed: float | None, seed: int, step: int) -> dict:
    return {} if dev_speed is None else {"dev_eval_loss": eval_loss(dev_speed, seed, step)}


def write_run(
    folder: Path,
    theta: float | None,
    beta: float | None,
    seed: int,
    last: int = STEPS,
    extra: tuple = (),
    *,
    optimizer: str | None = None,
    task: str = "trec",
    speed: float = 1.0,
    inv_d: float = 1e-3,
    dev_speed: float | None = None,
    forwards: float | None = None,
) -> None:
    """A run folder as the runner leaves it (`optimizer`; by default conmezo when θ is given, else
    mezo), stopped at `last`, its eval loss falling at `speed` (see `eval_loss`), its dev eval loss
    (logged only where `dev_speed` is given) at `dev_speed`, `forwards` a step (where given)."""
    name = optimizer or ("conmezo" if theta is not None else "mezo")
    overrides = [f"optimizer={name}", f"train.seed={seed}", *extra]
    if theta is not None:
        overrides += [f"optimizer.theta={theta}", f"optimizer.beta={beta}"]
    config = {
        "optimizer": {"name": name, "lr": 1e-6, "eps": 1e-3, "theta": theta or 1.35, "beta": beta or 0.99},
        "task": {"name": task, "data_seed": 42},
        "model": {"name": "roberta-large"},
        "train": {"steps": STEPS, "seed": seed, "eval_every": EVAL_EVERY},
    }
    rows = [
        {
            "step": 0,
            "accuracy": accuracy(theta, beta, seed, 0),
            "eval_loss": eval_loss(speed, seed, 0),
            "dev_accuracy": dev_accuracy(0),
            "evaluated": True,
        }
    ]
    rows[0] |= dev_loss(dev_speed, seed, 0)
    for step in range(1, last + 1):
        row = {"step": step, "loss": train_loss(seed, step), "lr": 1e-6, "beta_t": beta, "theta": theta,
               "projected_grad": 0.1, "step_time_s": 0.5}  # fmt: skip
        if forwards is not None:
            row["forwards"] = forwards
        if step % EVAL_EVERY == 0:
            row |= {
                "accuracy": accuracy(theta, beta, seed, step),
                "eval_loss": eval_loss(speed, seed, step),
                "dev_accuracy": dev_accuracy(step),
                "evaluated": True,
                **dev_loss(dev_speed, seed, step),
            }
        if step % ALIGN_EVERY == 0:
            row |= {
                "align_cos": cos2(theta, seed, step) ** 0.5,
                "align_cos2": cos2(theta, seed, step),
                "inv_d": inv_d,
            }
        rows.append(row)
    (folder / ".hydra").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    final = {"accuracy": rows[-1]["accuracy"]} if last == STEPS else None
    summary = {
        "status": "finished" if last == STEPS else "running",
        "error": None,
        "step": last,
        "steps": STEPS,
        "metric": "accuracy",
        "initial": {"accuracy": rows[0]["accuracy"]},
        "final": final,
        "s_per_step": 0.5 + seed,
        "peak_mem_mib": 1000.0 + seed,
        "device": "cpu",
        "overrides": overrides,
        "config": config,
        "output_dir": str(folder),
    }
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 θ × 2 β × 2 seeds of ConMeZO, and a MeZO baseline two folders deeper."""
    root = tmp_path / "sweep"
    for theta in THETAS:
        for beta in BETAS:
            for seed in SEEDS:
                write_run(
                    root / f"optimizer.beta={beta},optimizer.theta={theta},train.seed={seed}",
                    theta,
                    beta,
                    seed,
                )
    for seed in SEEDS:
        write_run(root / "baseline" / "mezo" / f"train.seed={seed}", None, None, seed)
    return root


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def by_setting(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["optimizer"], r["theta"], r["beta"], r["seed"]): r for r in rows}


def test_collect_runs_finds_every_run_at_any_depth(sweep: Path) -> None:
    runs = collect_runs(sweep)
    assert len(runs) == 10
    assert sum(r.name.startswith("baseline/mezo/") for r in runs) == 2
    assert {r.metric for r in runs} == {"accuracy"} and {r.status for r in runs} == {"finished"}


def test_runs_table_reads_fixed_steps_target_and_costs(sweep: Path) -> None:
    rows = by_setting(runs_table(collect_runs(sweep), steps=(50, 100, 1000), target=0.4))
    row = rows[("conmezo", 1.5, 0.99, 1)]
    assert row["at_50"] == pytest.approx(accuracy(1.5, 0.99, 1, 40))  # last evaluation at or before 50
    assert row["at_100"] == row["final"] == pytest.approx(accuracy(1.5, 0.99, 1, 100))
    assert (row["selected_on"], row["best_step"], row["best"]) == ("dev_accuracy", 60, dev_accuracy(60))
    assert row["test_at_best_dev"] == pytest.approx(accuracy(1.5, 0.99, 1, 60))  # not the best test (100)
    assert row["at_1000"] is None  # never reached: no value rather than step 100's
    expected = min(s for s in EVAL_STEPS if accuracy(1.5, 0.99, 1, s) >= 0.4)
    assert row["steps_to_target"] == expected == 60
    assert (row["s_per_step"], row["peak_mem_mib"], row["task"], row["status"]) == (
        1.5,
        1001.0,
        "trec",
        "finished",
    )
    assert row["align_cos2_mean"] == pytest.approx(statistics.fmean([cos2(1.5, 1, 50), cos2(1.5, 1, 100)]))
    mezo = rows[("mezo", None, None, 0)]  # θ and β mean nothing to MeZO: left blank, not 1.35/0.99
    assert mezo["lr"] == 1e-6 and mezo["steps_to_target"] is None  # mezo reaches only 0.3


def test_unfinished_run_has_no_final_and_no_value_past_its_last_step(tmp_path: Path) -> None:
    write_run(tmp_path / "cut", 1.2, 0.9, 0, last=70)
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 71, "loss": 0.')  # a job killed mid-write
    (row,) = runs_table(collect_runs(tmp_path), steps=(50, 80))
    assert (row["status"], row["step"], row["final"], row["at_80"]) == ("running", 70, None, None)
    assert row["at_50"] == pytest.approx(accuracy(1.2, 0.9, 0, 40))
    assert row["test_at_best_dev"] == pytest.approx(accuracy(1.2, 0.9, 0, 60)) and row["best_step"] == 60


def test_a_run_not_yet_trained_shows_only_the_theta_and_beta_it_was_given(tmp_path: Path) -> None:
    """Before its first training row a run cannot say whether its optimizer uses θ and β: a grid point
    that sets them keeps them, an FZOO run does not show the defaults every optimizer config carries."""
    write_run(tmp_path / "cone", 1.2, 0.9, 0, last=0)
    write_run(tmp_path / "fzoo", None, None, 0, last=0, optimizer="fzoo")
    rows = {r["optimizer"]: r for r in runs_table(collect_runs(tmp_path), steps=(50,))}
    assert (rows["conmezo"]["theta"], rows["conmezo"]["beta"]) == (1.2, 0.9)
    assert (rows["fzoo"]["theta"], rows["fzoo"]["beta"], rows["fzoo"]["step"]) == (None, None, 0)


def test_run_without_summary_is_read_from_hydra_files(tmp_path: Path) -> None:
    write_run(tmp_path / "r", 1.2, 0.9, 0)
    (tmp_path / "r" / "summary.json").unlink()
    (run,) = collect_runs(tmp_path)
    assert run.status == "unknown" and run.metric == "accuracy"
    assert run.get("optimizer.theta") == 1.2 and "train.seed=0" in run.overrides


@pytest.mark.parametrize("step", [None, 50])
def test_heatmap_cell_is_the_mean_over_seeds(sweep: Path, step: int | None) -> None:
    (heat,) = heatmap_data(collect_runs(sweep), step)  # mezo runs are not on the grid
    assert (heat.thetas, heat.betas, heat.metric, heat.facet) == (
        list(THETAS),
        list(BETAS),
        "accuracy",
        "trec",
    )
    at = STEPS if step is None else 40
    for i, theta in enumerate(THETAS):
        for j, beta in enumerate(BETAS):
            seeds = [accuracy(theta, beta, s, at) for s in SEEDS]
            assert heat.mean[i][j] == pytest.approx(statistics.fmean(seeds))
            assert heat.std[i][j] == pytest.approx(statistics.stdev(seeds))
            assert heat.n[i][j] == 2


def test_a_panel_per_other_setting_and_labels_name_what_differs_in_it(tmp_path: Path) -> None:
    for lr in ("0.1", "0.01"):
        for theta in THETAS:
            write_run(tmp_path / f"{lr}-{theta}", theta, 0.9, 0, extra=(f"optimizer.lr={lr}",))
        pinned = (f"optimizer.lr={lr}", "optimizer.theta=1.35", "optimizer.beta=0.99")  # MeZO next to a grid
        write_run(tmp_path / f"{lr}-mezo", None, None, 0, extra=pinned)
    write_run(tmp_path / "single", 1.2, 0.9, 0, extra=("optimizer.lr=1",))  # one cell: no grid, no heatmap
    runs = collect_runs(tmp_path)
    heat = heatmap_data(runs)
    assert [(h.facet, h.thetas) for h in heat] == [("η=0.01", list(THETAS)), ("η=0.1", list(THETAS))]
    lines = {(c.panel, c.label) for c in curves_data(runs)}
    grid = {"conmezo β=0.9 θ=1.2", "conmezo β=0.9 θ=1.5", "mezo"}  # no θ, β for MeZO: it ignores them
    assert lines == {(p, x) for p in ("η=0.1", "η=0.01") for x in grid} | {("η=1", "conmezo")}


def test_curves_are_mean_and_std_over_seeds_per_setting(sweep: Path) -> None:
    curves = {(c.label, c.series): c for c in curves_data(collect_runs(sweep))}
    assert {label for label, _ in curves} == {f"conmezo β={b} θ={t}" for t in THETAS for b in BETAS} | {
        "mezo"
    }
    acc = curves[("conmezo β=0.9 θ=1.5", "accuracy")]
    assert acc.steps == list(EVAL_STEPS) and acc.n == [2] * len(EVAL_STEPS)
    for step, mean, std in zip(acc.steps, acc.mean, acc.std, strict=True):
        seeds = [accuracy(1.5, 0.9, s, step) for s in SEEDS]
        assert (mean, std) == pytest.approx((statistics.fmean(seeds), statistics.stdev(seeds)))
    loss = curves[("mezo", "train_loss")]
    assert loss.steps == list(range(1, STEPS + 1))
    assert loss.mean[9] == pytest.approx(statistics.fmean(train_loss(s, 10) for s in SEEDS))


def test_quadratic_metric_counts_only_evaluation_steps(tmp_path: Path) -> None:
    """Training rows carry a biased 'loss' too; only steps the runner evaluates are f(x)."""
    rows = [{"step": 0, "loss": 10.0}]
    rows += [{"step": s, "loss": 10.0 - s / 10 + (0.5 if s % 5 else 0.0), "lr": 1e-3} for s in range(1, 21)]
    run = Run("q", {"train": {"steps": 20, "eval_every": 5}}, [], "finished", rows, "loss")
    assert [r["step"] for r in run.evals] == [0, 5, 10, 15, 20]
    assert run.value_at(12) == 9.0 and run.steps_to(8.6) == 15 and run.best()["step"] == 20
    marked = [{**r, "evaluated": True} if r["step"] in (0, 7) else r for r in rows]
    run = Run("q", {}, [], "finished", marked, "loss")  # metrics.jsonl says so itself: no config needed
    assert [r["step"] for r in run.evals] == [0, 7]


def test_report_writes_csv_png_svg_and_the_csv_holds_the_plotted_numbers(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "zo.report", str(sweep), "--out", str(out), "--step", "50", "--target", "0.4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "10 runs" in proc.stdout
    for stem in ("heatmap", "curves", "alignment"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (out / f"{stem}.svg").read_text()
    runs = collect_runs(sweep)
    (heat,) = heatmap_data(runs)
    cells = read_csv(out / "heatmap.csv")
    assert [float(c["mean"]) for c in cells] == pytest.approx([m for row in heat.mean for m in row])
    points = read_csv(out / "curves.csv")
    expected = [p for c in curves_data(runs) for p in c.points()]
    assert [(p["label"], p["series"], int(p["step"])) for p in points] == [
        (p["label"], p["series"], p["step"]) for p in expected
    ]
    assert [float(p["mean"]) for p in points] == pytest.approx([p["mean"] for p in expected])
    table = read_csv(out / "runs.csv")
    assert len(table) == 10 and {r["steps_to_target"] for r in table if r["optimizer"] == "mezo"} == {""}
    aligned = read_csv(out / "alignment.csv")
    assert {float(a["inv_d"]) for a in aligned} == {1e-3}


def test_figures_draw_exactly_the_aggregated_numbers(sweep: Path, tmp_path: Path) -> None:
    runs = collect_runs(sweep)
    maps = heatmap_data(runs)
    fig = report.plot_heatmaps(maps, tmp_path)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), np.array(maps[0].mean))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == [f"{v:.3g}" for row in maps[0].mean for v in row]

    curves = curves_data(runs)
    fig = report.plot_curves(curves, tmp_path)
    drawn = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines}
    for curve in (c for c in curves if c.series == "accuracy"):
        np.testing.assert_allclose(drawn[curve.label], curve.mean)

    aligned, inv_d = report.alignment_data(runs)
    fig = report.plot_alignment(aligned, inv_d, tmp_path)
    lines = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines}
    assert list(lines.pop("1/d (random direction)")) == [1e-3, 1e-3]
    for curve in aligned:
        np.testing.assert_allclose(lines[curve.label], curve.mean)
        assert curve.steps == [ALIGN_EVERY, STEPS]


def test_wandb_history_gives_the_same_table_as_the_folders(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--from-wandb against a stand-in API shaped like wandb's: history rows keyed by _step."""
    local = collect_runs(sweep)

    def api_run(run: Run) -> types.SimpleNamespace:
        summary = json.loads((sweep / run.name / "summary.json").read_text())
        history = [
            {
                "_step": r["step"],
                "_runtime": 1.0,
                **{k: v for k, v in r.items() if k not in ("step", "evaluated")},
            }
            for r in run.rows
        ]
        return types.SimpleNamespace(
            path=["me", "zo", run.name],
            config={**summary["config"], "overrides": summary["overrides"]},
            summary={k: summary[k] for k in ("status", "s_per_step", "peak_mem_mib")},
            state="finished",
            scan_history=lambda: iter(history),
        )

    class Api:
        def __init__(self, timeout: int) -> None:
            pass

        def runs(self, path: str, filters: dict) -> list:
            assert (path, filters) == ("me/zo", {"config.task.name": "trec"})
            return [api_run(r) for r in local]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=Api))
    remote = report.wandb_runs("me/zo", {"config.task.name": "trec"})
    strip = [{k: v for k, v in row.items() if k != "run"} for row in runs_table(local, (50,), 0.4)]
    assert [{k: v for k, v in row.items() if k != "run"} for row in runs_table(remote, (50,), 0.4)] == strip


def test_errors_are_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert report.main([str(tmp_path)]) == 1
    assert "no runs under" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login either
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path))
    assert report.main(["--from-wandb", "me/zo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read W&B project 'me/zo'") and "WANDB_API_KEY" in err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--from-wandb", "me/zo"])  # one source, not both


def test_report_reads_what_the_runner_writes(tmp_path: Path) -> None:
    """A real (quadratic) θ × β sweep through launch.py, then the report on its folders."""
    sweep = tmp_path / "sweep"
    args = [*QUAD, "optimizer=conmezo", "train.steps=40", "train.eval_every=10", "log.align_every=10", "-m",
            "optimizer.theta=1.2,1.5", "optimizer.beta=0.9,0.99", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = collect_runs(sweep)
    summaries = {r.name: json.loads((sweep / r.name / "summary.json").read_text()) for r in runs}
    table = runs_table(runs, steps=(20,), target=0.0)
    assert [r["status"] for r in table] == ["finished"] * 4 and {r["metric"] for r in table} == {"loss"}
    assert [r["final"] for r in table] == [summaries[r["run"]]["final"]["loss"] for r in table]
    assert [r["best"] for r in table] == [summaries[r["run"]]["best"]["loss"] for r in table]
    assert {r["selected_on"] for r in table} == {"loss"} and {r["test_at_best_dev"] for r in table} == {None}
    (heat,) = heatmap_data(runs)
    assert heat.n == [[1, 1], [1, 1]] and heat.thetas == [1.2, 1.5] and heat.betas == [0.9, 0.99]
    aligned, inv_d = report.alignment_data(runs)
    assert list(inv_d.values()) == pytest.approx([1e-3]) and all(c.steps == [10, 20, 30, 40] for c in aligned)
    written = {p.name for p in report.report(runs, tmp_path / "out")}
    assert {"runs.csv", "heatmap.svg", "curves.png", "alignment.csv"} <= written


# ---- the convergence study: tasks × optimizers × seeds ------------------------------------------

STUDY_SEEDS = (0, 1, 2)
SPEED = {  # eval-loss speed per (task, optimizer); MeZO's mean final eval loss, the target, is 1.45
    ("sst2_review", "mezo"): 1.0,
    ("sst2_review", "conmezo"): 2.0,  # mean curve ≤ 1.45 first at step 60: speedup 100 / 60
    ("sst2_review", "mezo_momentum"): 1.5,  # first at step 80: speedup 100 / 80
    ("bbcnews", "mezo"): 1.0,
    ("bbcnews", "conmezo"): 0.5,  # never, in any resample: the fastest draw ends at 1.625 > 1.6
    ("bbcnews", "mezo_momentum"): 1.5,
}
INV_D = {"sst2_review": 1e-3, "bbcnews": 2e-3}  # as if the tasks ran different models


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """The convergence sweep's layout: task × optimizer × 3 seeds, with known eval-loss speeds."""
    root = tmp_path / "study"
    for (task, name), speed in SPEED.items():
        for seed in STUDY_SEEDS:
            folder = root / f"optimizer={name},task={task},train.seed={seed}"
            extra = ("+sweeps=convergence", f"task={task}")
            write_run(folder, None, None, seed, extra=extra, optimizer=name, task=task, speed=speed,
                      inv_d=INV_D[task])  # fmt: skip
    return root


def test_series_curves_are_mean_and_std_over_seeds_with_a_panel_per_task(study: Path) -> None:
    curves = {(c.panel, c.label, c.series): c for c in report.series_data(collect_runs(study), ["eval_loss"])}
    panels = {f"task={t}" for t, _ in SPEED}
    assert set(curves) == {(f"task={t}", name, "eval_loss") for t, name in SPEED} and len(panels) == 2
    curve = curves[("task=sst2_review", "conmezo", "eval_loss")]
    assert curve.steps == list(EVAL_STEPS) and curve.n == [3] * len(EVAL_STEPS)
    for step, mean, std in zip(curve.steps, curve.mean, curve.std, strict=True):
        seeds = [eval_loss(2.0, s, step) for s in STUDY_SEEDS]
        assert (mean, std) == pytest.approx((statistics.fmean(seeds), statistics.stdev(seeds)))
    assert report.series_data(collect_runs(study), ["no_such_series"]) == []


def test_speedup_steps_to_mezos_final_eval_loss_are_exact(study: Path) -> None:
    rows = report.speedup_data(collect_runs(study))
    assert [(r["panel"], r["label"]) for r in rows] == [
        (f"task={t}", name)
        for t in ("bbcnews", "sst2_review")
        for name in ("mezo", "conmezo", "mezo_momentum")
    ]  # panels in order, the baseline first in each
    by = {(r["task"], r["optimizer"]): r for r in rows}
    target = statistics.fmean(eval_loss(1.0, s, STEPS) for s in STUDY_SEEDS)
    assert [r["target"] for r in rows] == pytest.approx([1.45] * 6) and target == pytest.approx(1.45)
    expected = {  # (mean-curve steps, speedup, steps of seeds 0, 1, 2)
        ("sst2_review", "mezo"): (100, 1.0, (None, None, 80)),
        ("sst2_review", "conmezo"): (60, 100 / 60, (80, 60, 40)),
        ("sst2_review", "mezo_momentum"): (80, 100 / 80, (100, 80, 60)),
        ("bbcnews", "mezo"): (100, 1.0, (None, None, 80)),
        ("bbcnews", "conmezo"): (None, None, (None, None, None)),
        ("bbcnews", "mezo_momentum"): (80, 100 / 80, (100, 80, 60)),
    }
    for key, (steps, speedup, seeds) in expected.items():
        row = by[key]
        assert (row["steps"], row["baseline_steps"], row["seeds"], row["evaluated_to"]) == (
            steps,
            100,
            3,
            STEPS,
        )
        assert row["speedup"] == (pytest.approx(speedup) if speedup else None), key
        assert tuple(row[f"steps_seed{s}"] for s in STUDY_SEEDS) == seeds, key
        assert row["final"] == pytest.approx(
            statistics.fmean(eval_loss(SPEED[key], s, STEPS) for s in STUDY_SEEDS)
        )
        for seed, hit in zip(STUDY_SEEDS, seeds, strict=True):  # per seed: the first evaluation ≤ target
            reached = [s for s in EVAL_STEPS if eval_loss(SPEED[key], seed, s) <= target]
            assert hit == (reached[0] if reached else None)
        # the scores there (mean over seeds): test accuracy by the write_run formula, dev the same for all
        test_there = steps and statistics.fmean(accuracy(None, None, s, steps) for s in STUDY_SEEDS)
        assert row["accuracy_at_reach"] == (pytest.approx(test_there) if steps else None), key
        assert row["dev_accuracy_at_reach"] == (pytest.approx(dev_accuracy(steps)) if steps else None), key


def test_speedup_bootstrap_interval_holds_the_estimate_and_is_reproducible(study: Path) -> None:
    runs = collect_runs(study)
    rows = {(r["task"], r["optimizer"]): r for r in report.speedup_data(runs)}
    assert rows == {(r["task"], r["optimizer"]): r for r in report.speedup_data(runs)}  # fixed RNG seed
    for row in rows.values():
        assert row["resamples"] == 2000
        if row["speedup"] is not None:
            assert row["speedup_lo"] <= row["speedup"] <= row["speedup_hi"]
    base = rows[("sst2_review", "mezo")]  # every draw recomputes MeZO's target: it always gets there
    assert (base["speedup_lo"], base["speedup_hi"], base["reached"]) == (1.0, 1.0, 1.0)
    # ConMeZO's slowest draw (seed 0 thrice) ends at 1.2, under the lowest target (1.25): always there
    assert rows[("sst2_review", "conmezo")]["reached"] == 1.0
    assert 0 < rows[("sst2_review", "mezo_momentum")]["reached"] < 1  # seed 0 thrice ends at 1.4
    never = rows[("bbcnews", "conmezo")]
    assert (never["reached"], never["speedup_lo"], never["speedup_hi"]) == (0.0, None, None)
    other = {(r["task"], r["optimizer"]): r for r in report.speedup_data(runs, seed=1)}
    assert other[("sst2_review", "conmezo")]["speedup"] == rows[("sst2_review", "conmezo")]["speedup"]


def test_speedup_interval_does_not_move_when_the_sweep_grows(study: Path) -> None:
    """A row's bootstrap draws are its own: the same with or without another task or method beside it."""
    runs = collect_runs(study)
    full = {(r["task"], r["optimizer"]): r for r in report.speedup_data(runs)}
    for task in ("sst2_review", "bbcnews"):  # one of them comes first in the full report
        for dropped in ("conmezo", "mezo_momentum"):  # conmezo sorts before mezo_momentum
            part = [r for r in runs if r.get("task.name") == task and r.get("optimizer.name") != dropped]
            rows = {(r["task"], r["optimizer"]): r for r in report.speedup_data(part)}
            assert len(rows) == 2
            for key, row in rows.items():  # the panel's label names the keys that vary: here none
                assert {**row, "panel": None} == {**full[key], "panel": None}, key


def test_speedup_with_one_seed_has_no_spread_and_needs_its_baseline(tmp_path: Path) -> None:
    for name, speed in (("mezo", 1.0), ("conmezo", 2.0), ("mezo_momentum", 1.5)):
        write_run(tmp_path / name, None, None, 2, optimizer=name, speed=speed)  # MeZO ends at 1.25
    runs = collect_runs(tmp_path)
    rows = {r["optimizer"]: r for r in report.speedup_data(runs, resamples=50)}
    assert rows["conmezo"]["target"] == pytest.approx(1.25) and rows["conmezo"]["steps"] == 60
    for row in rows.values():  # one seed: every draw is the sample itself
        assert row["speedup_lo"] == row["speedup"] == row["speedup_hi"] and row["resamples"] == 50
    assert rows["mezo_momentum"]["speedup"] == pytest.approx(100 / 80)
    assert [r["optimizer"] for r in report.speedup_data(runs, baseline="mezo_momentum")][0] == "mezo_momentum"
    assert report.speedup_data(runs, baseline="adamw") == []


def test_speedup_counted_in_forwards_weighs_each_step_by_its_cost(tmp_path: Path) -> None:
    """ConMeZO reaches MeZO's final mean (1.25) at step 60 against MeZO's 100, a 100/60 speedup in
    steps; at 4 forwards a step against MeZO's 2 it has spent 240 forwards to MeZO's 200: 200/240."""
    for name, speed, forwards in (("mezo", 1.0, 2), ("conmezo", 2.0, 4), ("mezo_momentum", 1.5, 2)):
        write_run(tmp_path / "runs" / name, None, None, 2, optimizer=name, speed=speed, forwards=forwards)
    runs = collect_runs(tmp_path / "runs")
    assert report.counts_forwards(runs)
    steps = {r["optimizer"]: r for r in report.speedup_data(runs, resamples=20)}
    rows = {r["optimizer"]: r for r in report.speedup_data(runs, resamples=20, unit="forwards")}
    assert steps["conmezo"]["speedup"] == pytest.approx(100 / 60)
    assert (rows["conmezo"]["forwards"], rows["conmezo"]["baseline_forwards"]) == (240, 200)
    assert (
        rows["conmezo"]["speedup"] == pytest.approx(200 / 240)
        and rows["conmezo"]["evaluated_to"] == 4 * STEPS
    )
    assert rows["mezo_momentum"]["speedup"] == pytest.approx(steps["mezo_momentum"]["speedup"])
    assert rows["conmezo"]["forwards_seed2"] == 240 and "steps" not in rows["conmezo"]
    # the scores where the target is reached: at step 60 (240 forwards), not at "step 240"
    assert rows["conmezo"]["accuracy_at_reach"] == pytest.approx(accuracy(None, None, 2, 60))
    assert rows["conmezo"]["dev_accuracy_at_reach"] == pytest.approx(dev_accuracy(60))
    written = {p.name for p in report.report(runs, tmp_path / "out")}
    assert {"speedup.csv", "speedup_forwards.csv"} <= written
    # the curves against forwards: ConMeZO's evaluation at step 20 comes after 80 of them
    spent = {c.label: c for c in report.series_data(runs, ["eval_loss"], x="forwards")}
    assert spent["conmezo"].steps == [4 * s for s in EVAL_STEPS] and spent["conmezo"].x == "forwards"
    assert spent["conmezo"].mean == pytest.approx([eval_loss(2.0, 2, s) for s in EVAL_STEPS])
    assert spent["mezo"].steps == [2 * s for s in EVAL_STEPS]
    drawn = read_csv(tmp_path / "out" / "curves_eval_loss_forwards.csv")
    assert [float(r["forwards"]) for r in drawn if r["label"] == "conmezo"] == spent["conmezo"].steps
    assert {"curves_eval_loss_forwards.png", "curves_eval_loss_forwards.svg"} <= written
    write_run(tmp_path / "runs" / "old", None, None, 1, optimizer="mezo")  # logged before forwards were
    assert not report.counts_forwards(collect_runs(tmp_path / "runs"))
    with pytest.raises(ReportError, match="logged no forwards"):
        report.speedup_data(collect_runs(tmp_path / "runs"), unit="forwards")


def test_lines_put_each_method_s_grid_against_one_baseline(tmp_path: Path) -> None:
    """The leaders study: MeZO at one η sets the target (its final loss, 1.6 at step 100, 200
    forwards); FZOO at two η, 9 forwards a step, gets there at step 60 (speed 2: 1.52) and 40 (speed
    3), 540 and 360 forwards; a third η not yet trained is in the table, not reached, and does not
    hide the forwards table. Without --lines each η is its own panel and only MeZO's has a target."""
    runs_dir = tmp_path / "runs"
    for point, speed, last in (("low", 2.0, STEPS), ("mid", 3.0, STEPS), ("high", 3.0, 0)):
        write_run(runs_dir / point, None, None, 0, last, (f"lr_point={point}",), optimizer="fzoo",
                  speed=speed, forwards=9)  # fmt: skip
    write_run(runs_dir / "mezo", None, None, 0, extra=("lr_point=mid",), optimizer="mezo", forwards=2,
              dev_speed=1.0)  # fmt: skip
    assert {r["panel"] for r in report.speedup_data(collect_runs(runs_dir), resamples=10)} == {"lr_point=mid"}
    out = tmp_path / "out"
    assert report.main([str(runs_dir), "--lines", "lr_point", "--out", str(out)]) == 0
    rows = {r["label"]: r for r in read_csv(out / "speedup_forwards.csv")}
    assert set(rows) == {"mezo lr_point=mid", *(f"fzoo lr_point={p}" for p in ("low", "mid", "high"))}
    assert [float(rows[f"fzoo lr_point={p}"]["forwards"]) for p in ("low", "mid")] == [540, 360]
    assert float(rows["fzoo lr_point=mid"]["speedup"]) == pytest.approx(200 / 360)
    assert (
        rows["fzoo lr_point=high"]["forwards"] == "" and float(rows["mezo lr_point=mid"]["forwards"]) == 200
    )
    # On dev (only MeZO scored it here: FZOO's rows are there, unreached) in forwards too
    dev = {r["label"]: r for r in read_csv(out / "speedup_dev_forwards.csv")}
    assert set(dev) == set(rows) and float(dev["mezo lr_point=mid"]["forwards"]) == 200


def test_alignment_has_a_panel_and_a_1_over_d_per_task(study: Path, tmp_path: Path) -> None:
    aligned, inv_d = report.alignment_data(collect_runs(study))
    assert inv_d == {f"task={t}": pytest.approx(d) for t, d in INV_D.items()}
    curve = next(c for c in aligned if (c.panel, c.label) == ("task=bbcnews", "mezo_momentum"))
    assert curve.steps == [ALIGN_EVERY, STEPS]
    assert curve.mean[-1] == pytest.approx(statistics.fmean(cos2(None, s, STEPS) for s in STUDY_SEEDS))
    fig = report.plot_alignment(aligned, inv_d, tmp_path)
    for ax in fig.axes:
        random = next(line for line in ax.lines if line.get_label() == "1/d (random direction)")
        assert list(random.get_ydata()) == [INV_D[ax.get_title().removeprefix("task=")]] * 2


def mezo_and_conmezo(root: Path, speed_key: str) -> list[Path]:
    """MeZO at speed 1 and ConMeZO at speed 2 on `sst2_review` × 3 seeds under `root`, the speed
    being `speed_key`'s (`speed`: the test eval loss, `dev_speed`: the dev one); MeZO's folders."""
    for name, speed in (("mezo", 1.0), ("conmezo", 2.0)):
        for seed in STUDY_SEEDS:
            folder = root / f"optimizer={name},task=sst2_review,train.seed={seed}"
            write_run(folder, None, None, seed, extra=("task=sst2_review",), optimizer=name,
                      task="sst2_review", **{speed_key: speed})  # fmt: skip
    return [root / f"optimizer=mezo,task=sst2_review,train.seed={seed}" for seed in STUDY_SEEDS]


def test_speedup_on_the_dev_split_where_its_loss_is_logged(tmp_path: Path) -> None:
    """Test losses that fall alike and dev losses where ConMeZO's falls twice as fast: speedup.csv
    says 1, speedup_dev.csv says 100/60 (the first evaluation at or below MeZO's final mean, 1.45,
    on 2 − 2 · 0.00575 · step is step 60); a study without dev losses writes no speedup_dev.csv."""
    root = tmp_path / "study"
    mezo_and_conmezo(root, "dev_speed")
    runs = collect_runs(root)
    test = {r["optimizer"]: r for r in report.speedup_data(runs)}
    dev = {r["optimizer"]: r for r in report.speedup_data(runs, series="dev_eval_loss")}
    assert test["conmezo"]["speedup"] == 1.0 and test["conmezo"]["series"] == "eval_loss"
    assert (dev["conmezo"]["steps"], dev["mezo"]["steps"]) == (60, 100)
    assert (
        dev["conmezo"]["speedup"] == pytest.approx(100 / 60) and dev["conmezo"]["series"] == "dev_eval_loss"
    )
    assert dev["conmezo"]["target"] == pytest.approx(1.45)
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out)]) == 0
    rows = {r["optimizer"]: r for r in read_csv(out / "speedup_dev.csv")}
    assert float(rows["conmezo"]["speedup"]) == pytest.approx(100 / 60)


def test_finished_reports_a_running_sweep_on_its_finished_seeds(tmp_path: Path) -> None:
    """ConMeZO's seed 2 still at step 40 cuts ConMeZO's mean curve at step 40, before it reaches
    MeZO's target, so it reads as not reached; `--finished` leaves that seed out: seeds 0 and 1 at
    speed 2 fall 2 · 0.0045 a step, first at or below 1.45 at step 80, 100/80. A sweep with no
    finished run is a one-line error."""
    root = tmp_path / "study"
    mezo_and_conmezo(root, "speed")
    running = root / "optimizer=conmezo,task=sst2_review,train.seed=2"
    shutil.rmtree(running)
    write_run(running, None, None, 2, last=40, extra=("task=sst2_review",), optimizer="conmezo",
              task="sst2_review", speed=2.0)  # fmt: skip
    for flags, steps, evaluated_to in (([], None, 40), (["--finished"], 80, STEPS)):
        out = tmp_path / f"out{len(flags)}"
        assert report.main([str(root), "--out", str(out), *flags]) == 0
        rows = {r["optimizer"]: r for r in read_csv(out / "speedup.csv")}
        assert rows["conmezo"]["steps"] == (str(steps) if steps else ""), flags
        assert int(rows["conmezo"]["evaluated_to"]) == evaluated_to
        assert len(read_csv(out / "runs.csv")) == 6 - len(flags)
    assert float(rows["conmezo"]["speedup"]) == pytest.approx(100 / 80)
    with pytest.raises(ReportError, match=r"none of the 1 runs has finished \(statuses: running\)"):
        report.finished_only([r for r in collect_runs(root) if r.status == "running"])


def test_speedup_smoothed_over_trailing_evaluations_survives_a_last_bump(tmp_path: Path) -> None:
    """MeZO's last evaluation jumps back to its step-0 loss (a noisy held-out set): as logged, its
    target is where every method starts, so nobody is faster; `smooth=3` compares trailing means
    of three evaluations, the target being MeZO's mean over its last three."""
    root = tmp_path / "study"
    for seed, folder in zip(STUDY_SEEDS, mezo_and_conmezo(root, "speed"), strict=True):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        rows[-1]["eval_loss"] = eval_loss(1.0, seed, 0)  # the last evaluation, step 100
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = collect_runs(root)
    raw = {r["optimizer"]: r for r in report.speedup_data(runs, resamples=50)}
    assert raw["mezo"]["target"] == pytest.approx(2.0) and raw["conmezo"]["steps"] == 0
    assert raw["conmezo"]["speedup"] is None and raw["conmezo"]["smooth"] == 1

    def trailing(values: list[float]) -> list[float]:
        return [statistics.fmean(values[i - 2 : i + 1]) for i in range(2, len(values))]

    steps = list(EVAL_STEPS)[2:]  # a window of three needs three evaluations: 40, 60, ..., 100

    def logged(name: str, speed: float, seed: int, step: int) -> float:
        return eval_loss(speed, seed, 0 if (name == "mezo" and step == STEPS) else step)

    def mean(name: str, speed: float, step: int) -> float:
        return statistics.fmean(logged(name, speed, seed, step) for seed in STUDY_SEEDS)

    curve = {  # each method's mean-over-seeds curve as logged, then smoothed
        name: trailing([mean(name, speed, step) for step in EVAL_STEPS])
        for name, speed in (("mezo", 1.0), ("conmezo", 2.0))
    }
    target = curve["mezo"][-1]
    first = {name: next(s for s, v in zip(steps, c, strict=True) if v <= target) for name, c in curve.items()}
    assert first == {"mezo": 80, "conmezo": 60}  # MeZO 1.655 ≤ 1.732 at 80; ConMeZO 1.54 at 60
    smooth = {r["optimizer"]: r for r in report.speedup_data(runs, resamples=50, smooth=3)}
    assert smooth["mezo"]["target"] == pytest.approx(target) and smooth["conmezo"]["smooth"] == 3
    assert (smooth["mezo"]["steps"], smooth["conmezo"]["steps"]) == (80, 60)
    assert smooth["conmezo"]["speedup"] == pytest.approx(80 / 60)
    assert smooth["conmezo"]["speedup_lo"] <= 80 / 60 <= smooth["conmezo"]["speedup_hi"]
    for seed in STUDY_SEEDS:  # each seed's own trailing curve against the same target
        own = trailing([eval_loss(2.0, seed, step) for step in EVAL_STEPS])
        hit = next((s for s, v in zip(steps, own, strict=True) if v <= target), None)
        assert smooth["conmezo"][f"steps_seed{seed}"] == hit
    with pytest.raises(ReportError, match="fewer than --smooth 7"):
        report.speedup_data(runs, smooth=7)  # six evaluations
    with pytest.raises(ReportError, match="1 or more"):
        report.speedup_data(runs, smooth=0)
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out), "--smooth", "3"]) == 0
    assert {r["optimizer"]: r["smooth"] for r in read_csv(out / "speedup.csv")} == {
        "mezo": "3",
        "conmezo": "3",
    }


def test_study_report_writes_series_curves_and_speedup(study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert report.main([str(study), "--out", str(out), "--series", "eval_loss", "accuracy"]) == 0
    printed = capsys.readouterr().out
    assert "steps to mezo's final eval_loss" in printed and "18 runs" in printed
    for stem in ("curves_eval_loss", "curves_accuracy", "alignment"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG" and "<svg" in (
            out / f"{stem}.svg"
        ).read_text()
    runs = collect_runs(study)
    points = read_csv(out / "curves_eval_loss.csv")
    expected = [p for c in report.series_data(runs, ["eval_loss"]) for p in c.points()]
    assert [(p["panel"], p["label"], int(p["step"])) for p in points] == [
        (p["panel"], p["label"], p["step"]) for p in expected
    ]
    assert [float(p["mean"]) for p in points] == pytest.approx([p["mean"] for p in expected])
    table = read_csv(out / "speedup.csv")
    head = ["panel", "task", "label", "optimizer", "baseline", "series", "smooth", "target"]
    assert list(table[0])[:8] == head and {r["smooth"] for r in table} == {"1"}
    assert {"speedup", "speedup_lo", "speedup_hi", "reached", "steps_seed0", "steps_seed2"} <= set(table[0])
    never = next(r for r in table if (r["task"], r["optimizer"]) == ("bbcnews", "conmezo"))
    assert (never["steps"], never["speedup"], never["speedup_lo"]) == ("", "", "")  # blank: not reached
    fig = report.plot_curves(report.series_data(runs, ["eval_loss"]), tmp_path, "curves_eval_loss")
    assert sorted(ax.get_title() for ax in fig.axes) == ["task=bbcnews", "task=sst2_review"]
    assert {ax.get_ylabel() for ax in fig.axes} == {"eval_loss"}
    assert report.main([str(study), "--out", str(tmp_path / "x"), "--series", "dev_eval_loss"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no run evaluated dev_eval_loss; evaluations log: accuracy, dev_accuracy")
    assert report.main([str(study), "--out", str(tmp_path / "x"), "--baseline", "adamw"]) == 1
    assert "no finished adamw run" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert not (out / "speedup_dev.csv").exists()  # no run logged a dev loss


# ---- the paper's table: optimizers × tasks ---------------------------------------------------------


def test_paper_table_cells_are_mean_and_std_over_seeds_of_the_test_score_at_best_dev(study: Path) -> None:
    from statistics import fmean, stdev

    from zo.report.table import latex, markdown, paper_table

    rows = runs_table(collect_runs(study))
    table = paper_table(rows)
    assert set(table.tasks) == {"sst2_review", "bbcnews"}
    assert set(table.optimizers) == {"mezo", "conmezo", "mezo_momentum"}
    for (opt, task), cell in table.cells.items():
        picked = [100 * r["test_at_best_dev"] for r in rows if (r["optimizer"], r["task"]) == (opt, task)]
        assert (
            cell.n == 3
            and cell.mean == pytest.approx(fmean(picked))
            and cell.std == pytest.approx(stdev(picked))
        )
    avg = table.average("mezo")
    assert avg == pytest.approx(fmean(table.cells["mezo", t].mean for t in table.tasks))
    md = markdown(table).splitlines()
    assert md[0].startswith("| accuracy | ") and md[0].endswith(" | avg |") and len(md) == 2 + 3 + 2
    mezo = next(line for line in md if line.startswith("| mezo |"))
    c = table.cells["mezo", table.tasks[0]]
    assert f"{c.mean:.1f} ± {c.std:.1f}" in mezo and mezo.endswith(f"| {avg:.1f} |")
    tex = latex(table)
    assert (
        tex.startswith("\\begin{tabular}{lccc}") and "sst2\\_review" in tex and f"${c.mean:.1f}_{{\\pm" in tex
    )


def test_paper_table_marks_a_missing_cell_and_drops_that_row_s_average(
    study: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    for folder in study.glob("optimizer=conmezo,task=bbcnews,*"):
        shutil.rmtree(folder)
    out = tmp_path / "out"
    assert report.main([str(study), "--table", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    conmezo = next(line for line in printed.splitlines() if line.startswith("| conmezo |"))
    assert "—" in conmezo and conmezo.endswith("| — |")
    assert sorted(p.name for p in out.iterdir()) == ["table.md", "table.tex"]
    assert (out / "table.md").read_text() in printed
