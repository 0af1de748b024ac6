"""Every registered optimizer through the real runner: it lowers the quadratic, and a run stopped by
SIGINT and resumed equals the uninterrupted one (so its state is all in the checkpoint)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

import zo.runner
from tests.conftest import QUAD, TINY, read_metrics, run_inprocess
from zo.optim import names

# The adaptive methods step ~η per coordinate where MeZO steps η·|p|: at QUAD's η = 1e-3 they move f by
# 9% in 300 steps, at 3e-3 by 22% (MeZO diverges there). MeZO-SVRG's anchors step 10 η (lr_full_ratio):
# at η = 1e-3 its η_fb = 1e-2 diverges; at 2e-4 (η_fb 2e-3) f falls by 31%. FZOO's normalised step is
# ~η too: 11% at 1e-3 (too close to the 10% bar), 30% at 3e-3.
LR = {"meazo": 3e-3, "zo_adam": 3e-3, "mezo_svrg": 2e-4, "fzoo": 3e-3, "sparse_mezo": 2e-3}
# Sparse-MeZO moves only each tensor's smallest |x_i|, which here hold little of f (at sparsity 0.8
# the active 20% hold ~0.3%, and a frozen x_i never moves): at 0.2 the active 80% hold ~35%, and
# f falls by 14% at η = 2e-3 (10.2% at 1e-3).
KEYS = {"sparse_mezo": ["optimizer.sparsity=0.2"]}
# Forwards a step as metrics.jsonl counts them (zo.report's speedup in forwards reads them): MeZO-SVRG
# alternates an anchor step (2 full-data probes; the quadratic's full data is one batch) and a
# minibatch step (2 probes at the live weights, 2 at the anchor's).
FORWARDS = {"adamw": [1], "sgd": [1], "hizoo": [3], "r_adazo": [3], "fzoo": [9], "loren": [10],
            "mezo_svrg": [2, 4]}  # fmt: skip


@pytest.mark.parametrize("name", names())
def test_quadratic_goes_down_in_300_steps(tmp_path: Path, name: str) -> None:
    lr = [f"optimizer.lr={LR[name]}"] if name in LR else []
    args = [*QUAD, f"optimizer={name}", "train.steps=300", *lr, *KEYS.get(name, [])]
    summary = run_inprocess(args, tmp_path)
    assert summary["status"] == "finished"
    assert summary["final"]["loss"] < 0.9 * summary["initial"]["loss"], name
    forwards = [row["forwards"] for row in read_metrics(tmp_path / "metrics.jsonl")[1:]]
    assert forwards == FORWARDS.get(name, [2]) * (300 // len(FORWARDS.get(name, [2]))), name


def test_a_probe_over_the_whole_training_set_counts_its_batches(tmp_path: Path, needs_shared) -> None:
    """MeZO-SVRG's anchor step evaluates the 16 training examples twice, in batches of 4: 8 forwards."""
    args = [*TINY, "optimizer=mezo_svrg", "task.num_train=16", "train.steps=2", "train.eval_every=0"]
    run_inprocess(args, tmp_path)
    assert [row["forwards"] for row in read_metrics(tmp_path / "metrics.jsonl")[1:]] == [8, 4]


RUNS = [(name, "full") for name in names()] + [
    (name, "log") for name in ("mezo", "conmezo", "loren", "mezo_svrg", "fzoo")
]


# LOREN with 4 probes a step, not 10: the same state and replay, at 40% of the forwards.
FEWER = {"loren": ["optimizer.queries=4"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list[str]], list[dict]]:
    """Each optimizer's uninterrupted metrics, run once for both checkpoint modes (ckpt.* changes
    nothing the run computes)."""
    cache: dict[str, list[dict]] = {}

    def metrics(name: str, args: list[str]) -> list[dict]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"whole-{name}")
            run_inprocess(args, out)
            cache[name] = read_metrics(out / "metrics.jsonl")
        return cache[name]

    return metrics


@pytest.mark.parametrize(("name", "mode"), RUNS)
def test_resume_after_sigint_equals_uninterrupted(
    tmp_path: Path, needs_shared: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted, name: str, mode: str
) -> None:
    """ckpt.mode=log: the checkpoint holds no tensors and the resume replays the trajectory log."""
    args = [*TINY, f"optimizer={name}", "train.steps=4", "train.eval_every=2", *FEWER.get(name, [])]
    whole = uninterrupted(name, args)
    stop_and_resume([*args, f"ckpt.mode={mode}"], tmp_path / "split", monkeypatch, at=2)
    assert read_metrics(tmp_path / "split" / "metrics.jsonl") == whole


def stop_and_resume(args: list[str], out: Path, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Run `args` in `out`, stopped by SIGINT during step `at`, then resume it to the end."""
    batch = zo.runner.train_batch

    def interrupted(train, size, seed, step):
        if step == at:
            signal.raise_signal(signal.SIGINT)  # the handler asks the loop to stop after this step
        return batch(train, size, seed, step)

    monkeypatch.setattr(zo.runner, "train_batch", interrupted)
    stopped = run_inprocess(args, out)
    assert stopped["status"] == "interrupted" and stopped["step"] == at
    monkeypatch.setattr(zo.runner, "train_batch", batch)
    if "ckpt.mode=log" in args:
        from zo.checkpoint import NAME

        assert (out / NAME).stat().st_size < 20_000  # a header, no weights
    resumed = run_inprocess(args, out)
    assert resumed["status"] == "finished"


# MeZO-SVRG's annealing on the quadratic, where an epoch is anneal_every = 1 step (it has no data): at
# η_mb 1.5e-2 (η_fb 0.15) the loss rises, so both lrs are divided at steps 6, 7 and 8 (the check at step
# t, from step 6 on, compares step t − 1's logged loss with step t − 3's), after which the loss settles.
ANNEAL = [*QUAD, "optimizer=mezo_svrg", "optimizer.lr=1.5e-2", "optimizer.anneal=true",
          "optimizer.anneal_every=1", "optimizer.anneal_min_lr=0", "optimizer.anneal_min_lr_full=0",
          "train.steps=14", "train.eval_every=5"]  # fmt: skip


@pytest.mark.parametrize(
    "at", [5, 7]
)  # just before the first anneal (its window spans the stop); between two
@pytest.mark.parametrize("mode", ["full", "log"])
def test_resume_with_mezo_svrg_annealing_equals_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted, mode: str, at: int
) -> None:
    """The annealed lrs and the loss window are in the state_dict (full), or re-derived from the
    trajectory log's losses (log): the resumed run logs the same losses and lrs."""
    whole = uninterrupted("mezo_svrg+anneal", ANNEAL)
    lrs = {row["step"]: row["lr"] for row in whole if "lr" in row}
    assert lrs[5] == 1.5e-2 and lrs[6] == pytest.approx(3e-3) and lrs[14] < lrs[7] < lrs[6]  # it annealed
    stop_and_resume([*ANNEAL, f"ckpt.mode={mode}"], tmp_path / "split", monkeypatch, at=at)
    assert read_metrics(tmp_path / "split" / "metrics.jsonl") == whole
