"""Data-parallel ZO (zo.distributed): 2 ranks under torchrun (gloo, CPU) equal 1 rank on the same shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY
from zo import ZOError
from zo.distributed import Ranks, check, pieces, sharded_mean

ARGS = [*TINY, "optimizer=conmezo", "train.steps=4", "train.eval_every=2",
        "train.shards=2"]  # fmt: skip


def launch(prefix: list[str], out: Path, args: list[str] = ARGS) -> None:
    # One thread per process in both runs: a matmul's reduction order depends on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [*prefix, str(ROOT / "launch.py"), *args, f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def rows(out: Path) -> list[dict]:
    table = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "step_time_s"} for r in table]


def test_two_ranks_equal_one_rank_on_the_same_shards_bitwise(tmp_path: Path, needs_shared) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    launch([sys.executable], one)
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], two)
    assert rows(two) == rows(one) and len(rows(one)) == 5
    for name in ("trajectory.bin", "model/model.safetensors"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["train"]["shards"] == 2
    ours = {p.name for p in two.iterdir()} - {".hydra"}
    assert ours == {p.name for p in one.iterdir()} - {".hydra"}  # rank 1 wrote nothing here


def test_generation_decodes_its_shards_on_two_ranks_as_one_rank_does(tmp_path: Path) -> None:
    """task=custom generation (issue #30): each rank decodes its shards of every evaluation set; the
    metrics and predictions.jsonl (gathered in test order) equal one rank's over the same shards."""
    import torch

    from tests.conftest import run_inprocess
    from tests.test_custom_generation import GEN, prompt_completion

    args = [*GEN, f"task.files.train={prompt_completion(tmp_path)}", "optimizer=mezo", "train.shards=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (launch)
    try:
        run_inprocess([*args, "log.wandb=disabled"], one)
    finally:
        torch.set_num_threads(threads)
    launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], two, args)
    assert rows(two) == rows(one) and {"f1", "dev_em", "eval_loss"} <= set(rows(one)[-1])
    assert (two / "predictions.jsonl").read_bytes() == (one / "predictions.jsonl").read_bytes()
    assert len((two / "predictions.jsonl").read_text().splitlines()) == 6


def test_shards_are_fixed_and_their_mean_is_the_weighted_mean() -> None:
    items = list(range(7))
    assert [list(p) for p in pieces(items, 3)] == [[0, 1, 2], [3, 4], [5, 6]]
    mean = sharded_mean(lambda part: sum(part) / len(part), items, 3, Ranks())
    assert mean == pytest.approx(3.0)


def test_shards_must_split_over_the_ranks_and_first_order_stays_on_one() -> None:
    with pytest.raises(ZOError, match="train.shards=3 does not split over 2 ranks"):
        check(3, Ranks(0, 2), backward=False)
    with pytest.raises(ZOError, match="first-order optimizers are not data-parallel"):
        check(2, Ranks(1, 2), backward=True)
    check(4, Ranks(1, 2), backward=False)


def test_a_failing_rank_leaves_no_scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks other than 0 write a scratch folder; it goes however the run ends (here: an error)."""
    import tempfile

    import zo.runner
    from tests.conftest import compose

    seen: list[Path] = []

    def fails(cfg, out_dir: Path, ranks, device):
        seen.append(out_dir)
        (out_dir / "metrics.jsonl").write_text("{}\n")
        raise ZOError("boom")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(zo.runner, "ranks_from_env", lambda device: Ranks(1, 2))
    monkeypatch.setattr(zo.runner, "train", fails)
    with pytest.raises(ZOError, match="boom"):
        zo.runner.run(compose(["model=quadratic", "task=quadratic"]), tmp_path / "run")
    assert len(seen) == 1 and seen[0].name.startswith("zo-rank1-") and not seen[0].exists()
    assert not (tmp_path / "run").exists()  # rank 1 never touches the run folder
