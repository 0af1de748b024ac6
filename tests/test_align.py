"""zo.align walks a finished run again and measures its momentum against a large-batch gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import QUAD, TINY, run_inprocess
from zo.align import ROWS, main


def logged_alignment(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["align_cos2"] for r in rows if "align_cos2" in r}


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ROWS).read_text().splitlines()]


def test_on_the_quadratic_the_batch_is_the_full_gradient_and_matches_the_live_log(tmp_path: Path) -> None:
    run_inprocess([*QUAD, "optimizer=conmezo", "train.steps=30", "log.align_every=10"], tmp_path)
    assert main([str(tmp_path), "--every", "10"]) == 0
    rows, live = rows_of(tmp_path), logged_alignment(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30] and len(live) == 3
    for r in rows:
        assert r["batch_full"] == pytest.approx(1.0)  # the quadratic has no data: one exact gradient
        assert r["cos2_full"] == pytest.approx(r["cos2_batch"])
        assert r["cos2_batch"] == pytest.approx(live[r["step"]], rel=1e-6)  # the replay is the live run
        assert r["inv_d"] == pytest.approx(1e-3)
    assert rows[-1]["cos2_full"] > 5 * 1e-3  # by step 30 the momentum beats a random direction 5×


@pytest.mark.parametrize("adapter", ["all", "lora"])
def test_on_a_language_model_the_batch_column_is_what_the_run_logged(
    tmp_path: Path, needs_shared, adapter: str
) -> None:
    """Full-parameter and through LoRA (the LoRA study aligns its runs: d is then the adapters')."""
    args = [*TINY, "optimizer=mezo_momentum", "train.steps=4", "log.align_every=2", "task.num_train=16",
            f"model.trainable={adapter}"]  # fmt: skip
    summary = run_inprocess(args, tmp_path)
    assert main([str(tmp_path), "--every", "2", "--examples", "12", "--chunk", "5"]) == 0
    rows, live = rows_of(tmp_path), logged_alignment(tmp_path)
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        assert r["cos2_batch"] == pytest.approx(live[r["step"]], rel=1e-4)
        assert r["examples"] == 12
        assert 0.0 < r["batch_full"] < 1.0  # 4 of the 16 examples do not point where all 12 do
        assert 0.0 <= r["cos2_full"] <= 1.0
        assert r["inv_d"] == pytest.approx(1 / summary["params"])  # the trained parameters' d


def test_a_log_shorter_than_every_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    run_inprocess([*QUAD, "optimizer=mezo", "train.steps=5"], tmp_path)
    assert main([str(tmp_path), "--every", "10"]) == 1
    assert "fewer than --every=10 steps" in capsys.readouterr().err
    assert not (tmp_path / ROWS).exists()


def test_a_folder_that_is_no_run_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "is not a run folder (it has no config.yaml)" in capsys.readouterr().err
