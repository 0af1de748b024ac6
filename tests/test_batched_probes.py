"""optimizer.batched_probes (zo.batched): a step's probes side by side in one forward give the losses
of the probes run one by one, on every architecture and adapter, and the run replays from its log."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from tests.conftest import QUAD, TINY, compose, minutes, read_metrics, run_inprocess
from tests.test_replay import replay_equals_saved_model
from zo import ZOError
from zo.config import ConfigError, validate
from zo.flat import block_limit
from zo.optim import build
from zo.trajectory import read

KIND = {"tiny-llama": "causal", "tiny-opt": "causal", "tiny-roberta": "mlm", "smollm2": "causal"}
# The methods whose probes are all on the batch at the live weights, and MeZO-SVRG (anchors stay sequential).
METHODS = {
    "mezo": ["optimizer=mezo"],
    "n-spsa": ["optimizer=mezo", "optimizer.queries=3"],
    "conmezo": ["optimizer=conmezo"],
    "hizoo": ["optimizer=hizoo"],
    "loren": ["optimizer=loren", "optimizer.queries=4", "optimizer.sequential=false"],
    "loren-sequential": ["optimizer=loren", "optimizer.queries=4"],
    "fzoo": ["optimizer=fzoo", "optimizer.queries=4"],
    "mezo_svrg": ["optimizer=mezo_svrg", "optimizer.anchor_every=2"],
}


def setup(model: str, extra: list[str]):
    from data import build_task
    from zo.config import model_config, optim_config
    from zo.models import load_model
    from zo.objective import build_objective
    from zo.runner import load_data

    tiny = [t for t in TINY if not t.startswith("model=")]
    cfg = compose([*tiny, f"model={model}", "optimizer.batched_probes=true", *extra])
    task = build_task(cfg.task.name)
    net, tokenizer = load_model(model_config(cfg), task.num_labels, seed=0)
    net.eval()
    objective = build_objective(task, KIND[model], tokenizer, cfg.task.max_length, cfg.task.train_loss)
    opt = build(net, optim_config(cfg), seed=0)
    return cfg, net, objective, opt, load_data(cfg, task).train


def loss_at(objective, net, batch, full):
    from zo.runner import mean_loss, mean_losses

    def at(probe):
        if isinstance(probe, tuple):
            return mean_losses(objective, net, batch, 4, len(probe))
        return mean_loss(objective, net, full if probe.data == "full" else batch, 4, backward=False)

    return at


def compare(model: str, extra: list[str], steps: int = 2) -> float:
    """Worst relative gap between the batched and the sequential losses of the same probes, over a few
    steps (each step then moves on the batched losses, so the second probes moved weights)."""
    cfg, net, objective, opt, train = setup(model, extra)
    opt.set_data(len(train[:12]), 6)
    worst = 0.0
    with torch.no_grad():
        for t in range(1, steps + 1):
            batch = train[(t - 1) * 6 : t * 6]  # 6 examples: parts of 4 and 2 (mean_loss's chunks)
            at = loss_at(objective, net, batch, train[:12])
            opt.begin_step(t)
            probes = opt.probes()
            batched, opt.batched = opt.batched, None
            alone = opt.forwards(probes, at)
            opt.batched = batched
            together = opt.forwards(probes, at)
            assert len(together) == len(probes)
            worst = max(worst, *(abs(a - b) / abs(a) for a, b in zip(alone, together, strict=True)))
            opt.estimate(together)
            opt.update(cfg.optimizer.lr, 0.9 if opt.uses_beta else None)
    opt.close()
    return worst


# Every method on one architecture; on the others, one method per kind of copy a probe makes (MeZO's
# x + εz, HiZOO's preconditioned one, LOREN's rank-1 pieces): what differs between architectures is
# which modules the copies enter (embeddings, norms, attention), not how a method forms them.
PAIRS = [("tiny-llama", method) for method in METHODS] + [
    (model, method) for model in ("tiny-opt", "tiny-roberta") for method in ("mezo", "hizoo", "loren")
]


@pytest.mark.parametrize(("model", "method"), PAIRS)
def test_batched_losses_equal_the_sequential_ones(model: str, method: str, needs_shared) -> None:
    assert compare(model, METHODS[method]) < 1e-5


@pytest.mark.parametrize(
    ("model", "method"),
    [(model, "mezo") for model in ("tiny-llama", "tiny-opt", "tiny-roberta")]
    + [("tiny-llama", method) for method in ("hizoo", "loren", "fzoo")],
)
def test_batched_losses_equal_the_sequential_ones_under_lora(model: str, method: str, needs_shared) -> None:
    assert compare(model, [*METHODS[method], "model.trainable=lora"]) < 1e-5


ELSEWHERE = [
    [*METHODS["fzoo"], "task.train_loss=lm"],
    [*METHODS["fzoo"], "model.trainable=prefix"],
    [*METHODS["fzoo"], "optimizer.probe_chunk=2"],
    [*METHODS["hizoo"], "optimizer.fused=true"],
]


@pytest.mark.parametrize("extra", ELSEWHERE, ids=lambda e: e[-1])
def test_batched_losses_equal_the_sequential_ones_elsewhere(extra: list[str], needs_shared) -> None:
    """The next-token loss (per copy: the mean over its own answer tokens), prefix tuning (the prompt
    encoder's rows per copy), probes in forwards of at most 2 (FZOO's 5: 2 + 2 + 1 alone), and the
    compiled kernels forming HiZOO's ± copies from one z."""
    assert compare("tiny-llama", extra) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("trainable", [pytest.param("all", marks=minutes), "lora"])
def test_batched_losses_equal_the_sequential_ones_on_smollm2(trainable: str, needs_shared) -> None:
    assert compare("smollm2", [*METHODS["fzoo"], f"model.trainable={trainable}"], steps=1) < 1e-5


@pytest.mark.parametrize(("chunk", "forwards"), [(0, 1), (2, 3), (4, 2)])
def test_one_forward_per_group_and_the_weights_untouched(chunk: int, forwards: int, needs_shared) -> None:
    """FZOO's 5 probes: one forward of 5 copies, or groups of probe_chunk (a group of one runs alone);
    the parameters are bitwise what they were, and closing the optimizer unwraps every module."""
    _, net, objective, opt, train = setup("tiny-llama", [*METHODS["fzoo"], f"optimizer.probe_chunk={chunk}"])
    calls = []
    net.model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape[0]),
                                        with_kwargs=True)  # fmt: skip
    before = [p.detach().clone() for p in net.parameters()]
    opt.begin_step(1)
    with torch.no_grad():
        losses = opt.forwards(opt.probes(), loss_at(objective, net, train[:4], None))
    assert len(calls) == forwards and sum(calls) == 4 * len(losses)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    opt.close()
    assert not any("forward" in vars(m) or "_old_forward" in vars(m) for m in net.modules())


@pytest.mark.parametrize("method", ["mezo", "loren"])
def test_transient_weights_stay_within_one_block_per_copy(method: str, needs_shared) -> None:
    """At any moment the perturbed weights alive are one copy of one block (or head chunk), plus its
    z where copies share it (MeZO's ± pair): never a copy per probe, never a model-sized tensor."""
    _, net, objective, opt, train = setup("tiny-llama", METHODS[method])
    live: dict[int, int] = {}  # id -> numel of each perturbed copy or z alive
    peak = [0]

    def tracking(fn):
        def tracked(*args):
            out = fn(*args)
            if id(out) not in live:
                live[id(out)] = out.numel()
                peak[0] = max(peak[0], sum(live.values()))
                weakref.finalize(out, live.pop, id(out))
            return out

        return tracked

    opt.block_weights = tracking(opt.block_weights)  # z, and the copies of the sequential path
    opt._perturbed = tracking(opt._perturbed)  # every copy a hook swaps in
    opt.begin_step(1)
    with torch.no_grad():
        opt.forwards(opt.probes(), loss_at(objective, net, train[:4], None))
    assert 0 < peak[0] <= 2 * block_limit(opt.d) < opt.d // 4


def test_a_batched_run_is_the_sequential_run_and_replays(tmp_path: Path, needs_shared) -> None:
    """End to end: the metrics of a batched run (in two shards, as data parallelism combines them)
    follow the sequential run's, its trajectory header says how it ran, and its replay lands on the
    saved model bitwise."""
    args = [*TINY, *METHODS["fzoo"], "train.steps=3", "task.num_train=16", "optimizer.lr=1e-4"]
    run_inprocess(args, tmp_path / "seq")
    batched = [
        "optimizer.batched_probes=true",
        "optimizer.probe_chunk=3",
        "train.shards=2",
    ]  # shards: one rank
    run_inprocess([*args, *batched], tmp_path / "bat")
    seq, bat = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("seq", "bat"))
    for a, b in zip(seq, bat, strict=True):
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    header = read(tmp_path / "bat")[0]
    assert (header["batched_probes"], header["probe_chunk"]) == (True, 3)
    replay_equals_saved_model(tmp_path / "bat", steps=3)


def test_batched_probes_need_probes_and_a_batch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batched_probes=true is invalid: adamw"):
        validate(compose([*QUAD, "optimizer=adamw", "optimizer.batched_probes=true"]))
    with pytest.raises(ConfigError, match="probe_chunk=-1 is invalid"):
        validate(compose([*QUAD, "optimizer.probe_chunk=-1"]))
    with pytest.raises(ZOError, match="no batch to repeat"):
        run_inprocess([*QUAD, "optimizer.batched_probes=true", "train.steps=1"], tmp_path / "q")
