"""Selection on dev (MeZO's protocol): every evaluation scores dev and test, the best step is the
best dev score, and the reported number is test at that step, beside the final test score."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY, read_metrics, run_inprocess


def test_best_step_is_chosen_on_dev_and_reports_its_test_score(tmp_path: Path, needs_shared: Path) -> None:
    args = [*TINY, "optimizer=mezo", "train.steps=8", "train.eval_every=2"]
    summary = run_inprocess(args, tmp_path)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("evaluated")]
    assert [r["step"] for r in evals] == [0, 2, 4, 6, 8]
    assert all({"accuracy", "eval_loss", "dev_accuracy", "dev_eval_loss"} <= set(r) for r in evals)
    best = max(evals, key=lambda r: r["dev_accuracy"])  # first of the ties, as the runner keeps it
    assert summary["selected_on"] == "dev" and summary["best"]["step"] == best["step"]
    assert (
        summary["test_at_best_dev"] == best["accuracy"]
        and summary["final"]["accuracy"] == evals[-1]["accuracy"]
    )
    assert summary["final"]["dev_accuracy"] == evals[-1]["dev_accuracy"]


def test_without_a_dev_split_nothing_is_selected(tmp_path: Path, needs_shared: Path) -> None:
    summary = run_inprocess([*TINY, "train.steps=2", "train.dev_samples=0"], tmp_path)
    assert summary["selected_on"] is None and summary["best"] is None and summary["test_at_best_dev"] is None
    assert "dev_accuracy" not in read_metrics(tmp_path / "metrics.jsonl")[0]
