"""The trajectory log is the run: replaying its losses on the base model gives the live weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import QUAD, TINY, read_metrics, run_inprocess
from zo import ZOError
from zo.optim import get, names
from zo.optim.base import ZOOptimizer
from zo.replay import apply, main, rebuild, start_of
from zo.trajectory import BIN, read

ZO = [n for n in names() if issubclass(get(n), ZOOptimizer)]
# Each ZO optimizer with its own noise, and MeZO with the other one (fzoo's own is rademacher).
REPLAYED = [[f"optimizer={n}"] for n in ZO] + [["optimizer=mezo", "optimizer.noise=rademacher"]]


@pytest.mark.parametrize("choice", REPLAYED, ids=",".join)
def test_replay_rebuilds_the_live_weights_bitwise(choice: list[str], tmp_path: Path, needs_shared) -> None:
    args = [*TINY, *choice, "train.steps=4", "task.num_train=16"]
    run_inprocess(args, tmp_path / "run")
    replay_equals_saved_model(tmp_path / "run", steps=4)


def replay_equals_saved_model(run_dir: Path, steps: int) -> None:
    """The replayed log's weights are bitwise those of the model the live run saved."""
    from transformers import AutoModelForCausalLM

    live = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    replayed, _, last = rebuild(run_dir)
    assert last == steps
    ours = dict(replayed.named_parameters())
    for n, p in live.named_parameters():
        assert torch.equal(ours[n], p), n


def test_replay_rebuilds_mezo_svrg_annealing_bitwise(tmp_path: Path, needs_shared) -> None:
    """MeZO-SVRG with anneal=true and its epoch from the data (4 examples in batches of 4: one step):
    the log's header carries the training set's size, so the replay re-derives every annealed lr
    (steps 6–8 here, at η 1e-2) and lands on the live weights bitwise."""
    args = [*TINY, "optimizer=mezo_svrg", "optimizer.lr=1e-2", "optimizer.anneal=true", "train.steps=8",
            "task.num_train=4", "optimizer.anneal_min_lr=0", "optimizer.anneal_min_lr_full=0"]  # fmt: skip
    run_inprocess(args, tmp_path / "run")
    assert read(tmp_path / "run")[0]["train_examples"] == 4
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert lrs[4] == 1e-2 and lrs[5] == pytest.approx(2e-3)  # annealed at step 6
    replay_equals_saved_model(tmp_path / "run", steps=8)


def test_replay_rederives_mezo_svrg_annealing_state_on_the_quadratic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same without data (anneal_every = 1): the replayed optimizer's k, loss window and x are the
    live run's, compared directly (the quadratic saves no model folder)."""
    import zo.runner
    from tests.test_every_optimizer import ANNEAL

    built: list = []  # the live run's (model, tokenizer, optimizer, schedule)
    build_run = zo.runner.build_run

    def keep(*args, **kwargs):
        built.append(build_run(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(zo.runner, "build_run", keep)
    run_inprocess(ANNEAL, tmp_path)
    monkeypatch.undo()
    model, _, live, _ = built[0]
    s = start_of(tmp_path)
    assert apply(s.optimizer, s.records, s.cfg.optimizer.lr, s.schedule, None, str(tmp_path)) == 14
    assert torch.equal(s.model.x, model.x)
    state = lambda o: (o.anneals, o.epochs_done, o.epoch_sum, o.epoch_means)  # noqa: E731
    assert state(s.optimizer) == state(live) and live.anneals == 3


def test_two_probe_log_is_21_bytes_a_step_and_shows_as_jsonl(tmp_path: Path, capsys) -> None:
    summary = run_inprocess([*QUAD, "optimizer=conmezo", "train.steps=50"], tmp_path)
    assert (tmp_path / BIN).stat().st_size == 50 * 21  # ≤ 32: a 20k-step run in 420 KB
    header, records = read(tmp_path)
    assert (header["optimizer"], header["d"], header["steps"]) == ("conmezo", 1000, 50)
    assert [s for s, _ in records] == list(range(1, 51)) and all(len(v) == 2 for _, v in records)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["loss"] for r in metrics if r["step"] and not r.get("evaluated")}
    assert all(sum(v) / 2 == pytest.approx(logged[s]) for s, v in records if s in logged)
    capsys.readouterr()  # the run's own output
    assert main([str(tmp_path), "--show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[1]) == {"step": 1, "losses": records[0][1]} and len(lines) == 51
    assert summary["status"] == "finished"


def test_resumed_run_cuts_its_log_back_to_the_checkpoint(tmp_path: Path) -> None:
    from zo.trajectory import TrajectoryLog

    log = TrajectoryLog(tmp_path, {"optimizer": "mezo", "d": 3}, resume_step=None)
    for step in range(1, 8):
        log.write(step, [float(step), -float(step)])
    with open(tmp_path / BIN, "ab") as fh:
        fh.write(b"\x08\x00\x00")  # a record torn by a kill
    TrajectoryLog(tmp_path, {"optimizer": "mezo", "d": 3}, resume_step=5)
    assert [s for s, _ in read(tmp_path)[1]] == [1, 2, 3, 4, 5]


def test_first_order_runs_write_no_log_and_replay_says_so(tmp_path: Path) -> None:
    run_inprocess([*QUAD, "optimizer=sgd", "train.steps=3"], tmp_path)
    assert not (tmp_path / BIN).exists()
    with pytest.raises(ZOError, match="has no trajectory log"):
        rebuild(tmp_path)


def test_log_mode_checkpoints_need_a_zo_optimizer(tmp_path: Path) -> None:
    with pytest.raises(ZOError, match="ckpt.mode=log needs a ZO optimizer .*use ckpt.mode=full"):
        run_inprocess([*QUAD, "optimizer=adamw", "train.steps=2", "ckpt.mode=log"], tmp_path)


def test_imports_run_one_way_runner_replay_build() -> None:
    """zo.runner uses zo.replay (a log-mode resume) and both build a run with zo.build; neither zo.replay
    nor zo.build may import zo.runner back (a cycle made each module half-defined during import)."""
    import ast

    from tests.conftest import ROOT

    for name in ("replay", "build"):
        tree = ast.parse((ROOT / "zo" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "zo.runner" not in imported, name
