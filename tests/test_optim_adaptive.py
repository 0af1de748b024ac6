"""MEAZO, ZO-Adam (ZO-AdaMM) and MeZO's n-SPSA queries against doc §4/§5's worked examples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zo.noise
from tests.conftest import QUAD, compose
from tests.test_kernels import Tied, tiny_llama
from tests.test_optim import Linear, zo_step
from zo import ZOError
from zo.config import ConfigError, validate
from zo.fused import kernel
from zo.noise import mix
from zo.optim import build
from zo.optim.zo_adam import adam_step


class HalfSquare(nn.Module):
    """f(x) = ½‖x‖² (in fp64), so (f(x+λu) − f(x−λu)) / 2λ = xᵀu for any λ."""

    def __init__(self, x: list[float]) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor(x))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.x.double() ** 2).sum()


def inject(monkeypatch: pytest.MonkeyPatch, seed: int, directions: dict[int, list[float]]) -> None:
    """Make z of step t exactly directions[t], in the forwards and in the update kernels."""
    table = {mix(seed, t): torch.tensor(u) for t, u in directions.items()}
    fake = lambda idx, s: table[s][idx]  # noqa: E731
    monkeypatch.setattr(zo.noise, "normal_at", fake)  # every kernel draws through zo.noise.noise_at


@pytest.mark.parametrize(("beta", "expected"), [(0.9, (0.784839, 0.868517)), (0.999, (0.782930, 0.866812))])
def test_meazo_worked_example(monkeypatch: pytest.MonkeyPatch, beta: float, expected: tuple) -> None:
    inject(monkeypatch, 0, {1: [1.0, 0.0], 2: [1.0, 1.0], 3: [1.0, -1.0]})
    model = HalfSquare([1.0, 1.0])
    opt = build(model, {"name": "meazo", "beta": beta, "zeta": 0.0, "eps": 1.0, "fused": False}, seed=0)
    gs = [zo_step(opt, model, t, lr=0.1, beta=None) for t in (1, 2, 3)]
    assert gs == pytest.approx([1.0, 1.9, -0.1], abs=1e-6)
    if beta == 0.9:
        assert opt.v == pytest.approx([0.4069], abs=1e-6)
    torch.testing.assert_close(model.x.detach(), torch.tensor(expected), rtol=0, atol=1e-6)


class Sloped(nn.Module):
    """f(W) = a·ΣW over a 2×2 matrix (weight decay applies to matrices), in fp64: g = a·Σz exactly."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, -0.25]]))
        self.a = a

    def forward(self) -> torch.Tensor:
        return self.a * self.w.double().sum()


@pytest.mark.parametrize("slope", [0.0, 1e-6])
def test_meazo_weight_decay_is_decoupled_from_the_adaptive_step(
    monkeypatch: pytest.MonkeyPatch, slope: float
):
    """x ← x − η_t ĝ − η·wd·x: with v̂ tiny (g = 0: η_t = η/ζ = 1e5; g = 1e-6: η_t ≈ 1e3) the decay
    factor is exactly 1 − η·wd on every coordinate that z leaves alone; coupled to η_t it would be
    1 − 1e5·0.1 < 0 and flip every weight's sign."""
    inject(monkeypatch, 0, {1: [1.0, 0.0, 0.0, 0.0]})
    model = Sloped(slope)
    lr, wd = 1e-3, 0.1
    keys = {"name": "meazo", "weight_decay": wd, "zeta": 1e-8, "eps": 1e-3, "fused": False}
    opt = build(model, keys, seed=0)
    before = model.w.detach().clone()
    g = zo_step(opt, model, 1, lr=lr, beta=None)
    assert g == pytest.approx(slope, rel=1e-4, abs=0.0)  # fp32 weights at x ± λz: not exactly a
    assert lr / (opt.v[0] ** 0.5 + 1e-8) >= 1e3  # η_t: the adaptive step is huge
    after = model.w.detach()
    decayed = (1.0 - lr * wd) * before  # the kernel's own op: an fp32 multiply by 1 − η·wd
    assert torch.equal(after.view(-1)[1:], decayed.view(-1)[1:])  # z = 0 there: decay alone
    step = lr / (abs(g) + 1e-8) * g  # η_t·g along z = e₀ (√v̂ = |g| after one update; 0 when g = 0)
    assert float(after[0, 0]) == pytest.approx(float(decayed[0, 0]) - step, rel=1e-6)
    assert torch.equal(after.sign(), before.sign())


def adam_run(monkeypatch: pytest.MonkeyPatch, amsgrad: bool, steps: int) -> tuple[Linear, object]:
    """Doc §4: f = aᵀx with a = (2, 0) gives c = 2 at z = (1, −0.5) and c = 1 at z = (0.5, 1);
    step 3 (z = (0.1, 1), c = 0.2) lowers v in the first coordinate only."""
    inject(monkeypatch, 0, {1: [1.0, -0.5], 2: [0.5, 1.0], 3: [0.1, 1.0]})
    model = Linear(torch.tensor([2.0, 0.0]))
    opt = build(model, {"name": "zo_adam", "amsgrad": amsgrad, "eps": 1.0, "fused": False}, seed=0)
    for t in range(1, steps + 1):
        zo_step(opt, model, t, lr=0.1, beta=None)
    return model, opt


def test_zo_adam_worked_example(monkeypatch: pytest.MonkeyPatch) -> None:
    model, opt = adam_run(monkeypatch, amsgrad=False, steps=2)
    torch.testing.assert_close(opt.momentum[0], torch.tensor([0.23, 0.01]), rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.second[0], torch.tensor([0.004246, 0.001999]), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.x.detach(), torch.tensor([-0.183060, 0.094737]), rtol=0, atol=1e-6)
    assert opt.peak == [] and opt.steps == 2


def adam_1d(gs: list[float], amsgrad: bool, lr: float = 0.1) -> float:
    """Scalar Adam from x = 0 with the doc's defaults, written out: the reference for one coordinate."""
    x = m = v = peak = 0.0
    for t, g in enumerate(gs, start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        peak = max(peak, v)
        x -= lr * (m / (1 - 0.9**t)) / (((peak if amsgrad else v) / (1 - 0.999**t)) ** 0.5 + 1e-8)
    return x


def test_amsgrad_keeps_the_max_and_differs_only_where_v_fell(monkeypatch: pytest.MonkeyPatch) -> None:
    adam_model, plain = adam_run(monkeypatch, amsgrad=False, steps=3)
    ams_model, opt = adam_run(monkeypatch, amsgrad=True, steps=3)
    adam, ams = adam_model.x.detach(), ams_model.x.detach()
    v3 = 0.999 * torch.tensor([0.004246, 0.001999]) + 0.001 * torch.tensor([0.02, 0.2]) ** 2
    torch.testing.assert_close(plain.second[0], v3, rtol=0, atol=1e-8)
    assert len(opt.peak) == 1 and "peak" in opt.state_dict()  # the third buffer
    torch.testing.assert_close(opt.peak[0], torch.tensor([0.004246, float(v3[1])]), rtol=0, atol=1e-8)
    g0 = [2.0, 0.5, 0.02]  # the first coordinate's g: its v falls at step 3
    assert float(adam[0]) == pytest.approx(adam_1d(g0, amsgrad=False), abs=1e-6)
    assert float(ams[0]) == pytest.approx(adam_1d(g0, amsgrad=True), abs=1e-6)
    assert float(ams[0]) - float(adam[0]) > 2e-5  # a larger denominator: a shorter step
    assert float(ams[1]) == float(adam[1])  # v rose at every step here: the max is v itself


@pytest.mark.parametrize("q", [1, 3])
def test_mezo_queries_average_q_single_estimates(q: int) -> None:
    a = torch.linspace(-1.0, 2.0, 12)
    model = Linear(a)
    model.x.data = torch.linspace(0.5, -0.5, 12)
    x0 = model.x.detach().clone()
    opt = build(model, {"name": "mezo", "queries": q, "eps": 0.5, "fused": False}, seed=4)
    opt.begin_step(7)
    probes = opt.probes()
    assert [(p.scale, p.k) for p in probes] == [(s, k) for k in range(q) for s in (1.0, -1.0)]
    losses, zs = [], []
    with torch.no_grad():
        for p in probes:
            with opt.perturb(p):
                losses.append(model().item())
                zs.append(opt.direction(0))
    single = [float(a @ z) for z in zs[::2]]  # f linear: p_k = aᵀz_k exactly
    assert len({float(z.sum()) for z in zs[::2]}) == q  # q different directions
    assert opt.estimate(losses) == pytest.approx(sum(single) / q, abs=1e-5)
    opt.update(0.1, None)
    expected = x0 - 0.1 * sum(p * z for p, z in zip(single, zs[::2], strict=True)) / q
    torch.testing.assert_close(model.x.detach(), expected, rtol=0, atol=1e-5)


def groups_of(opt) -> list[set[int]]:
    """Which parameters (indices into opt.params) each MEAZO group holds."""
    return [
        {i for i, s in enumerate(opt.flat.segments) if any(a <= opt.flat.slice(s.run())[1] < b for a, b in r)}
        for r in opt.ranges
    ]


@pytest.mark.parametrize("groups", ["layer", "tensor"])
def test_grouped_meazo_perturbs_and_moves_only_the_chosen_group(groups: str) -> None:
    """The hooks (blocks, embedding rows, the tied head in chunks) see λz on the step's group alone,
    and the update moves only that group's weights."""
    if groups == "layer":  # 30 small layers between a tied embedding and head: a layer is one hook block
        torch.manual_seed(0)
        model, loss = Tied(), lambda: float(model())
    else:
        model, ids = tiny_llama(torch.float32, layers=2), torch.tensor([[5, 7, 5, 290, 0, 7]])
        loss = lambda: float(model(input_ids=ids, labels=ids).loss)  # noqa: E731
    opt = build(model, {"name": "meazo", "groups": groups, "lr": 1e-2, "eps": 1e-2, "fused": False}, seed=1)
    members = groups_of(opt)
    assert sorted(i for g in members for i in g) == list(range(len(opt.params)))  # a partition
    if groups == "tensor":
        assert members == [{i} for i in range(len(opt.params))]
    else:  # the embedding (tied to the head), then each layer
        assert len(members) == 31 and members[0] == {0}
        assert {id(opt.params[i]) for i in members[2]} == {id(p) for p in model.body[1].parameters()}
    with torch.no_grad():
        for t in (1, 3):  # the embedding + head group, then a layer's (or one tensor's)
            opt.begin_step(t)
            b = opt.group
            assert b == t - 1
            zs = [opt.direction(i) for i in range(len(opt.params))]
            assert all(bool(z.any()) == (i in members[b]) for i, z in enumerate(zs))
            before = [p.detach().clone() for p in opt.params]
            with opt.perturb(+1):
                hooked = loss()
            for p, z in zip(opt.params, zs, strict=True):
                p.add_(opt.cfg.eps * z)
            manual = loss()
            for p, x in zip(opt.params, before, strict=True):
                p.copy_(x)
            assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0) and hooked != loss()
            opt.step(t, lambda probe: loss(), opt.cfg.lr, None)
            moved = {
                i for i, (p, x) in enumerate(zip(opt.params, before, strict=True)) if not torch.equal(p, x)
            }
            assert moved == members[b]
    assert [n > 0 for n in opt.updates] == [i in (0, 2) for i in range(len(members))]


@pytest.mark.parametrize(
    "config",
    [
        {"name": "meazo", "groups": "tensor", "queries": 2},
        {"name": "zo_adam", "amsgrad": True, "state_dtype": "bf16", "weight_decay": 0.1},
    ],
)
def test_state_round_trips_into_a_fresh_optimizer(config: dict) -> None:
    def fresh():
        model = Linear(torch.linspace(-1.0, 1.0, 6))
        model.x.data = torch.linspace(1.0, 2.0, 6)
        return model, build(model, {**config, "eps": 1e-2, "fused": False}, seed=2)

    whole, opt = fresh()
    for t in range(1, 7):
        zo_step(opt, whole, t, lr=1e-2, beta=None)
    half, first = fresh()
    for t in range(1, 4):
        zo_step(first, half, t, lr=1e-2, beta=None)
    state, x = first.state_dict(), half.x.detach().clone()
    resumed, second = fresh()
    resumed.x.data.copy_(x)
    second.load_state_dict(state)
    for t in range(4, 7):
        zo_step(second, resumed, t, lr=1e-2, beta=None)
    assert torch.equal(resumed.x, whole.x)
    assert str(second.state_dict()) == str(opt.state_dict())


@pytest.mark.parametrize(
    ("saved", "loaded", "needle"),
    [
        ({"name": "meazo"}, {"name": "meazo", "groups": "tensor"}, "use the same optimizer.groups"),
        ({"name": "zo_adam"}, {"name": "zo_adam", "amsgrad": True}, "the same optimizer.amsgrad"),
    ],
)
def test_mismatched_state_is_one_line(saved: dict, loaded: dict, needle: str) -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    state = build(model, saved, seed=0).state_dict()
    with pytest.raises(ZOError, match=needle) as err:
        build(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1)), loaded, seed=0).load_state_dict(state)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optimizer=meazo", "optimizer.zeta=-1"], "optimizer.zeta=-1 is invalid: allowed zeta >= 0"),
        (["optimizer=meazo", "optimizer.beta=1.0"], "optimizer.beta=1.0 is invalid: allowed 0 <= beta < 1"),
        (["optimizer=meazo", "optimizer.beta=-0.1"], "optimizer.beta=-0.1 is invalid"),
        (["optimizer=meazo", "optimizer.queries=0"], "optimizer.queries=0 is invalid: allowed queries >= 1"),
        (["optimizer=meazo", "optimizer.groups=foo"], "optimizer.groups=foo is invalid: allowed one of none"),
        (["optimizer=zo_adam", "optimizer.beta2=1"], "optimizer.beta2=1 is invalid: allowed 0 <= beta2 < 1"),
        (["optimizer=zo_adam", "optimizer.delta=0"], "optimizer.delta=0 is invalid: allowed delta > 0"),
        (["optimizer=zo_adam", "optimizer.state_dtype=fp8"], "optimizer.state_dtype=fp8 is invalid"),
        (["optimizer=mezo_momentum", "optimizer.queries=2"], "mezo_momentum takes one probe pair a step"),
        (["optimizer=conmezo", "optimizer.queries=2"], "conmezo takes one probe pair a step"),
    ],
)
def test_bad_keys_are_one_line_config_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose([*QUAD, *overrides]))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["mezo", "meazo", "zo_adam"])
def test_queries_are_taken_where_the_update_uses_them(name: str) -> None:
    validate(compose([*QUAD, f"optimizer={name}", "optimizer.queries=4"]))


def test_zo_adam_fused_kernel_follows_eager() -> None:
    """The compiled adam_step (two noises, coupled decay, the running max) against the same math op by op."""
    outs = []
    for fused in (False, True):
        gen = torch.Generator().manual_seed(0)
        x, m, v = torch.randn(3, 1000, generator=gen).unbind()
        v, peak = v.abs(), v.abs() * 1.5  # the max holds where it is larger, moves where v passes it
        hyper = (0.9, 0.999, 1 - 0.9**3, 1 - 0.999**3, 1e-8)
        kernel(adam_step, fused)(
            x, (m, v, peak), 10, (11, "gaussian", 0.7, ((12, -0.3),)), (1, 2, 3, 4), 0.1, 1e-2, hyper, True
        )
        outs.append((x, m, v, peak))
    for eager, compiled in zip(*outs, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert 0 < int((outs[0][3] == outs[0][2]).sum()) < 1000
