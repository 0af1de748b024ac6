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


# ---- the noise draw's version (zo.noise) ----------------------------------------------------------
def as_before_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw as the code did before the Gaussian draw had versions: its normal_at was version 1's."""
    import zo.noise

    monkeypatch.setattr(zo.noise, "normal_at", zo.noise.normal_v1_at)


def drop_version(run_dir: Path) -> None:
    """Make the run's trajectory header (and checkpoint, if any) look written before the version was
    recorded: without the `noise_version` key."""
    from zo import checkpoint

    path = run_dir / "trajectory.json"
    header = json.loads(path.read_text())
    del header["noise_version"]
    path.write_text(json.dumps(header))
    ckpt = run_dir / checkpoint.NAME
    if ckpt.exists():
        from safetensors.torch import load_file

        header = checkpoint.read_header(ckpt)
        del header["noise_version"]
        checkpoint.write(ckpt.with_suffix(".tmp"), load_file(ckpt), header)  # not over its own mmap
        ckpt.with_suffix(".tmp").replace(ckpt)


def test_new_runs_record_the_current_noise_version(tmp_path: Path) -> None:
    from zo import checkpoint
    from zo.noise import NOISE_VERSION

    run_inprocess([*QUAD, "optimizer=mezo", "train.steps=2", "ckpt.every=1"], tmp_path)
    assert NOISE_VERSION == 2 and read(tmp_path)[0]["noise_version"] == 2
    assert checkpoint.read_header(tmp_path / checkpoint.NAME)["noise_version"] == 2
    assert start_of(tmp_path).optimizer.draw == "gaussian"


def test_a_log_without_a_noise_version_replays_bitwise_with_version_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needs_shared
) -> None:
    """A tiny-llama run logged by the code before versions (version 1 draws, no key in its header)
    replays onto its saved model bitwise; read as version 2 it would not."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        as_before_versions(m)
        run_inprocess([*TINY, "optimizer=mezo", "train.steps=4", "task.num_train=16"], run)
    drop_version(run)
    s = start_of(run)
    assert (s.optimizer.cfg.noise_version, s.optimizer.draw) == (1, "gaussian@1")
    replay_equals_saved_model(run, steps=4)
    header = json.loads((run / "trajectory.json").read_text())
    (run / "trajectory.json").write_text(json.dumps({**header, "noise_version": 2}))
    with pytest.raises(AssertionError):
        replay_equals_saved_model(run, steps=4)


def test_a_checkpoint_without_a_noise_version_resumes_with_version_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run checkpointed by the code before versions and resumed by this one logs what the old code
    would have logged uninterrupted (and version 2 would not)."""
    import signal

    import zo.runner

    args = [*QUAD, "optimizer=mezo", "train.steps=6", "train.eval_every=3"]
    with monkeypatch.context() as m:
        as_before_versions(m)
        run_inprocess(args, tmp_path / "whole")
        batch = zo.runner.train_batch

        def interrupted(train, size, seed, step):
            if step == 3:
                signal.raise_signal(signal.SIGINT)  # the loop stops after this step, checkpointed
            return batch(train, size, seed, step)

        m.setattr(zo.runner, "train_batch", interrupted)
        assert run_inprocess(args, tmp_path / "split")["status"] == "interrupted"
    drop_version(tmp_path / "split")
    assert run_inprocess(args, tmp_path / "split")["status"] == "finished"
    whole = read_metrics(tmp_path / "whole" / "metrics.jsonl")
    assert read_metrics(tmp_path / "split" / "metrics.jsonl") == whole
    run_inprocess(args, tmp_path / "new")  # version 2 from the start: another trajectory
    assert read_metrics(tmp_path / "new" / "metrics.jsonl")[-1] != whole[-1]


def test_the_committed_runs_read_as_version_1(capsys) -> None:
    """The runs in results/convergence/ were logged before versions: their headers (log and
    checkpoint) carry none, so they replay and resume with version 1, and --show still reads them."""
    from tests.conftest import ROOT
    from zo import checkpoint
    from zo.noise import version_of

    runs = sorted((ROOT / "results" / "convergence").glob("*/trajectory.json"))
    assert len(runs) == 18
    for path in runs:
        header = read(path.parent)[0]
        assert "noise_version" not in header and version_of(header) == 1
        assert version_of(checkpoint.read_header(path.parent / checkpoint.NAME)) == 1
    assert main([str(runs[0].parent), "--show"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["header"]["d"] == 134515008 and json.loads(lines[1])["step"] == 1
