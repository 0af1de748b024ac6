"""FZOO against zo-methods.md §7's worked example, its skipped steps, and the Rademacher noise every
MeZO-style method can draw (optimizer.noise)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import zo.noise
from tests.conftest import QUAD, compose, read_metrics, run_inprocess
from tests.test_optim import Linear
from zo import Diverged, ZOError
from zo.checkpoint import differences
from zo.config import SCHEMA_KEYS, ConfigError, optim_config, validate
from zo.fused import kernel
from zo.noise import mix, normal_at, normal_v1_at, positions, rademacher_at
from zo.optim import build
from zo.optim.base import STALL_STEPS, Probe
from zo.optim.fzoo import FZOOConfig
from zo.replay import start_of

CPU = torch.device("cpu")
X0 = [0.5, -0.3, 0.2, 1.0]
# §7's example: d = 4, N = 3; per step the three z_k, l_0 and (l_1, l_2, l_3).
Z = {
    1: [[1, -1, 1, 1], [-1, -1, 1, -1], [1, 1, -1, -1]],
    2: [[-1, 1, 1, -1], [1, 1, -1, 1], [-1, -1, -1, 1]],
}
LOSSES = {1: [2.0, 2.3, 1.8, 2.15], 2: [1.9, 1.95, 1.7, 1.92]}


class Weights(nn.Module):
    """A 4-vector whose forward records the weights it saw and returns a given loss."""

    def __init__(self, x: list[float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x))
        self.seen: list[list[float]] = []

    def forward(self) -> torch.Tensor:
        self.seen.append(self.x.detach().tolist())
        return self.x.sum()


def fixed_z(monkeypatch: pytest.MonkeyPatch, seed: int, table: dict[int, list[list[int]]]) -> None:
    """Make z_k of step t exactly table[t][k − 1] in the forwards and the update."""
    by_seed = {
        mix(mix(seed, t), 0xD12EC7, k): torch.tensor(z, dtype=torch.float32)
        for t, zs in table.items()
        for k, z in enumerate(zs, start=1)
    }
    monkeypatch.setattr(zo.noise, "rademacher_at", lambda idx, s: by_seed[s][idx])


def fzoo(model: nn.Module, **values):
    return build(model, {"name": "fzoo", "queries": 3, "fused": False, **values}, seed=0)


SIGMA = {1: 0.209497, 2: 0.111455}  # population std of l_1..l_3
COEF = {1: [0.477334, -0.318223, 0.238667], 2: [0.149537, -0.598149, 0.059815]}  # code form
AFTER = {  # x after steps 1 and 2: code form (η = 0.01), paper form (ε = 0.01, η = 1e-4)
    "code": [[0.489658, -0.300796, 0.200796, 0.994431], [0.497733, -0.295711, 0.193917, 1.001310]],
    "paper": [[0.491556, -0.300650, 0.200650, 0.995453], [0.498149, -0.296498, 0.195033, 1.001069]],
}


@pytest.mark.parametrize(("form", "eps", "lr"), [("code", 1e-3, 0.01), ("paper", 0.01, 1e-4)])
def test_worked_example(monkeypatch: pytest.MonkeyPatch, form: str, eps: float, lr: float) -> None:
    fixed_z(monkeypatch, 0, Z)
    model = Weights(X0)
    opt = fzoo(model, form=form, eps=eps)
    for t in (1, 2):
        opt.replay(t, LOSSES[t], lr, None)
        assert opt.projected_grad == pytest.approx(SIGMA[t] / eps, rel=1e-5)  # σ/ε
        if form == "code":
            assert opt.coef == pytest.approx(COEF[t], abs=1e-6)
        torch.testing.assert_close(model.x.detach(), torch.tensor(AFTER[form][t - 1]), rtol=0, atol=1e-6)
    assert opt.skipped == 0


def test_probes_see_x_then_x_plus_eps_z_k_and_log_l0(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_z(monkeypatch, 0, Z)
    model = Weights(X0)
    opt = fzoo(model, eps=0.5)
    assert list(opt.probes()) == [Probe(0.0), Probe(1.0, 1), Probe(1.0, 2), Probe(1.0, 3)]
    with torch.no_grad():
        losses = opt.step(1, lambda probe: model().item(), 0.0, None)
    expected = [X0] + [[x + 0.5 * z for x, z in zip(X0, zk, strict=True)] for zk in Z[1]]
    torch.testing.assert_close(torch.tensor(model.seen), torch.tensor(expected), rtol=0, atol=1e-7)
    assert opt.logged_loss(losses) == losses[0] == pytest.approx(sum(X0))


def test_flat_losses_skip_the_step_bitwise_and_count_it() -> None:
    model = Weights(X0)
    opt = fzoo(model, weight_decay=0.5)  # not even the decay applies on a skipped step
    before = model.x.detach().clone()
    with pytest.warns(RuntimeWarning, match="fzoo skipped a step"):
        opt.replay(1, [1.0, 2.0, 2.0, 2.0], 0.1, None)  # σ = 0 although every l_k ≠ l_0
    assert torch.equal(model.x.detach(), before)
    assert opt.skipped == 1 and opt.projected_grad == 0.0 and opt.step_metrics() == {"skipped": 1}
    with pytest.warns(RuntimeWarning, match="fzoo skipped a step"):  # a spread that overflows
        opt.replay(2, [0.0, 1e308, -1e308, 1e308], 0.1, None)
    assert torch.equal(model.x.detach(), before) and opt.skipped == 2
    opt.replay(3, [1.0, 2.0, 1.0, 2.0], 0.1, None)
    assert not torch.equal(model.x.detach(), before) and opt.skipped == 2
    state = opt.state_dict()
    other = fzoo(Weights(X0))
    other.load_state_dict(state)
    assert other.skipped == 2


def test_a_run_of_skipped_steps_earns_the_stall_warning() -> None:
    opt = fzoo(Weights(X0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(1, STALL_STEPS + 1):
            opt.replay(t, [1.0, 1.0, 1.0, 1.0], 0.1, None)
    stalls = [w for w in caught if "steps in a row" in str(w.message)]
    assert len(stalls) == 1 and opt.skipped == STALL_STEPS


@pytest.mark.parametrize("losses", [[math.nan, 1.0, 2.0, 3.0], [1.0, 2.0, math.inf, 3.0]])
def test_a_non_finite_loss_stops_the_run(losses: list[float]) -> None:
    """The runner's policy for every method: a NaN l_0 means x itself is broken, skipping would keep it."""
    model = Weights(X0)
    opt = fzoo(model)
    with pytest.raises(Diverged, match="loss is not finite"):
        opt.replay(1, losses, 0.1, None)
    assert opt.skipped == 0 and model.x.tolist() == pytest.approx(X0)


def test_skipped_steps_are_logged_and_stop_a_stalled_run(tmp_path: Path) -> None:
    """λ far below fp32's resolution: every probe sees f(x), σ = 0 on every step."""
    stall = [*QUAD, "optimizer=fzoo", "optimizer.eps=1e-30", "train.steps=50", "train.stall_steps=5"]
    with pytest.raises(ZOError, match="stalled at step 5: the projected gradient was exactly 0 for 5 steps"):
        run_inprocess(stall, tmp_path)
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] >= 1]
    assert [r["skipped"] for r in rows] == [1, 2, 3, 4, 5]


def test_yaml_mirrors_the_config_and_checks_refuse_bad_values() -> None:
    assert optim_config(compose(["optimizer=fzoo"])) == FZOOConfig(name="fzoo")
    assert (FZOOConfig.lr, FZOOConfig.queries, FZOOConfig.noise, FZOOConfig.form) == (
        1e-5,
        8,
        "rademacher",
        "code",
    )
    for bad, match in [("optimizer.queries=1", "queries=1 is invalid"), ("optimizer.form=both", "form=both")]:
        with pytest.raises(ConfigError, match=match):
            validate(compose([*QUAD, "optimizer=fzoo", bad]))


# ---- Rademacher noise ----------------------------------------------------------------------------


def test_rademacher_draw_is_balanced_pm1_and_regenerates_by_slice() -> None:
    n = 1 << 21  # > EAGER_PIECE: the eager draw runs in pieces
    r = rademacher_at(positions(0, n, CPU), seed=42)
    assert r.dtype == torch.float32 and bool(((r == 1.0) | (r == -1.0)).all())
    assert abs(float(r.double().mean())) < 5 / math.sqrt(n)  # 5σ of a fair ±1 mean
    assert abs(float((r[1:] * r[:-1]).double().mean())) < 5 / math.sqrt(n)  # neighbours independent
    assert not torch.equal(r[:1000], rademacher_at(positions(0, 1000, CPU), seed=43))
    assert torch.equal(rademacher_at(positions(123_456, 5000, CPU), seed=42), r[123_456:128_456])
    idx = positions(0, 1000, CPU).view(10, 100)
    assert torch.equal(rademacher_at(idx, 42), r[:1000].view(10, 100))
    compiled = kernel(rademacher_at, fused=True)(positions(0, n, CPU), 42)
    assert torch.equal(compiled, r)


def test_gaussian_streams_are_unchanged() -> None:
    """Committed logs replay only if each version of the Gaussian draw still draws the numbers it drew
    (version 1: pinned before optimizer.noise existed; rel 1e-6, not bitwise, so that another CPU's
    log and cos may pass); version 2 (what new runs draw) likewise."""
    assert normal_v1_at(positions(0, 4, CPU), seed=42).tolist() == pytest.approx(
        [-0.8716075420379639, 0.676837146282196, -1.5638879537582397, 1.4826443195343018], rel=1e-6
    )
    assert normal_v1_at(positions(10**9, 3, CPU), seed=7).tolist() == pytest.approx(
        [0.5242943167686462, 0.7183293104171753, -2.0415871143341064], rel=1e-6
    )
    assert normal_at(positions(0, 4, CPU), seed=42).tolist() == pytest.approx(
        [0.7038342356681824, -0.09733400493860245, 1.545320987701416, -1.5913938283920288], rel=1e-6
    )
    assert normal_at(positions(10**9, 3, CPU), seed=7).tolist() == pytest.approx(
        [1.5049781799316406, 1.3933104276657104, -1.3934365510940552], rel=1e-6
    )


def test_mezo_rademacher_perturbs_every_weight_by_exactly_pm_lambda() -> None:
    lam = 2.0**-6
    model = Linear(torch.ones(4096))
    model.x.data = 1.0 + torch.arange(4096, dtype=torch.float32) * 2.0**-14  # in [1, 1.25): x ± λ exact
    x0 = model.x.detach().clone()
    opt = build(model, {"name": "mezo", "noise": "rademacher", "eps": lam, "fused": False}, seed=3)
    opt.begin_step(1)
    z = opt.direction(0)
    assert bool(((z == 1.0) | (z == -1.0)).all()) and 0 < int((z > 0).sum()) < 4096
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(m.x.detach().clone()))  # after the swap-in
    for scale in (+1.0, -1.0):
        with torch.no_grad(), opt.perturb(scale):
            model()
        assert torch.equal(seen[-1] - x0, scale * lam * z)
    assert torch.equal(model.x.detach(), x0)


def test_conmezo_rademacher_u_is_exactly_unit() -> None:
    model = Linear(torch.ones(1000))
    opt = build(model, {"name": "conmezo", "noise": "rademacher", "fused": False}, seed=0)
    assert opt.u_scale == 1.0 / math.sqrt(1000)
    assert opt.m_norm == pytest.approx(1.0, abs=1e-6)  # m_0 = u_0 = n/√d
    opt.begin_step(5)
    assert opt.u_scale == 1.0 / math.sqrt(1000)


@pytest.mark.parametrize("name", ["lozo", "loren"])
def test_methods_whose_z_is_not_elementwise_refuse_rademacher(name: str) -> None:
    with pytest.raises(
        ZOError, match=f"optimizer.noise=rademacher is invalid: optimizer {name} allows gaussian"
    ):
        build(Linear(torch.ones(4)), {"name": name, "noise": "rademacher"}, seed=0)
    with pytest.raises(ConfigError, match="optimizer.noise=rademacher is invalid"):
        validate(compose([*QUAD, f"optimizer={name}", "optimizer.noise=rademacher"]))


def test_runs_saved_before_the_noise_key_compare_as_gaussian() -> None:
    saved = {"optimizer": {"name": "mezo", "lr": 1e-6}}
    now = {"optimizer": {"name": "mezo", "lr": 1e-6, "noise": "gaussian"}}
    assert differences(saved, now, SCHEMA_KEYS) == []
    now["optimizer"]["noise"] = "rademacher"
    assert differences(saved, now, SCHEMA_KEYS) == ["optimizer.noise=gaussian (now rademacher)"]


def test_replay_reads_the_noise_from_the_header(tmp_path: Path) -> None:
    run_inprocess([*QUAD, "optimizer=mezo", "optimizer.noise=rademacher", "train.steps=2"], tmp_path)
    header = json.loads((tmp_path / "trajectory.json").read_text())
    assert header["noise"] == "rademacher"
    assert start_of(tmp_path).optimizer.cfg.noise == "rademacher"
    del header["noise"]  # a log written before the key: gaussian, which this config.yaml does not build
    (tmp_path / "trajectory.json").write_text(json.dumps(header))
    with pytest.raises(
        ZOError, match="with gaussian noise, config.yaml builds mezo over 1000 with rademacher"
    ):
        start_of(tmp_path)
