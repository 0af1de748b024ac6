"""HiZOO and MeZO-SVRG against the doc's worked example and hand computation, exact restore, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zo
import zo.noise
import zo.optim.base
import zo.optim.hizoo
import zo.optim.mezo
from tests.conftest import compose
from tests.test_kernels import tiny_llama
from tests.test_optim import TwoLayer
from zo.config import ConfigError, validate
from zo.noise import mix
from zo.optim import build, get
from zo.optim.base import OptimConfig, Probe
from zo.quadratic import Quadratic


class Bowl(nn.Module):
    """f = ½(a₁x₁² + a₂x₂²) (a: the full-data curvatures, b: a batch's), recording the x each forward saw.

    fp64 weights: an fp32 loss of ~2.5 is off by ~2e-7, which HiZOO's 1/(2ε²) = 50 would carry into H."""

    def __init__(self, a: tuple[float, float], b: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.a, self.b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
        self.seen: list[tuple[str, list[float]]] = []

    def forward(self, data: str = "full") -> torch.Tensor:
        self.seen.append((data, self.x.detach().tolist()))
        return 0.5 * ((self.a if data == "full" else self.b) * self.x**2).sum()


def close_to(seen: list, expected: list) -> None:
    """The weights some forwards saw (Bowl.seen entries) against their hand-computed values."""
    actual = torch.tensor([x for _, x in seen], dtype=torch.float64)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), atol=1e-6, rtol=0)


def config(name: str, **values) -> OptimConfig:
    """The optimizer's own Config, eager. HiZOO gets a strong α, so that H moves visibly in a few steps;
    MeZO-SVRG's anchors the tests' lr (1e-2) rather than its default 10× lr."""
    own = {"hizoo": {"hessian_smooth": 0.5}, "mezo_svrg": {"lr_full": 1e-2}}[name]
    return get(name).Config(name=name, fused=False, **(own | values))


def fixed_noise(monkeypatch: pytest.MonkeyPatch, table: dict[int, list[float]]) -> None:
    """Make the Gaussian noise of seed s the vector table[s] (indexed by flat position) in every kernel."""

    def noise(idx: torch.Tensor, seed: int) -> torch.Tensor:
        return torch.tensor(table[seed], dtype=torch.float32)[idx]

    monkeypatch.setattr(zo.noise, "normal_at", noise)


def test_hizoo_reproduces_the_doc_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doc §2: f = ½(x₁² + 4x₂²), x = (1, 1), H = 1, u = (1, −1), ε = 0.1, α = 0.5, η = 0.1."""
    model = Bowl(a=(1.0, 4.0))
    opt = build(model, config("hizoo", eps=0.1), seed=0)  # α = 0.5
    fixed_noise(monkeypatch, {mix(0, t): [1.0, -1.0] for t in (1, 2)})
    with torch.no_grad():
        losses = opt.step(1, lambda probe: model().item(), 0.1, None)
    assert losses == pytest.approx([2.5, 2.225, 2.825], abs=1e-6)
    assert opt.logged_loss(losses) == pytest.approx(2.5, abs=1e-6)  # L₀, the loss at x
    assert opt.projected_grad == pytest.approx(-3.0, abs=1e-5)
    assert opt.hessian[0].tolist() == pytest.approx([1.75, 1.75], abs=1e-6)
    assert model.x.tolist() == pytest.approx([1.226779, 0.773221], abs=1e-6)
    close_to(model.seen, [[1, 1], [1.1, 0.9], [0.9, 1.1]])
    # The next step's forwards see x ± ε u/√H with the H the update left.
    model.seen.clear()
    with torch.no_grad():
        opt.step(2, lambda probe: model().item(), 0.1, None)
    shift = 0.1 / 1.75**0.5
    x1, x2 = 1.226779, 0.773221
    expected = [[x1, x2], [x1 + shift, x2 - shift], [x1 - shift, x2 + shift]]
    close_to(model.seen, expected)


def test_hizoo_without_smoothing_is_refused_as_mezo() -> None:
    with pytest.raises(ConfigError, match=r"optimizer.hessian_smooth=0 .*use optimizer=mezo"):
        validate(compose(["optimizer=hizoo", "optimizer.hessian_smooth=0"]))


def test_svrg_anchor_and_minibatch_steps_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """q = 3: anchor at step 1, two corrected steps at the one snapshot, a new anchor at step 4.

    Full loss F = ½(x₁² + 4x₂²), batch loss f_B = ½(2x₁² + x₂²); central differences are exact on a
    quadratic, so every c is ∇·z. ε = 0.1, η_fb = 0.1, η_mb = 0.05, x₀ = (1, 1).
    """
    model = Bowl(a=(1.0, 4.0), b=(2.0, 1.0))
    opt = build(model, config("mezo_svrg", eps=0.1, lr_full=0.1, anchor_every=3), seed=0)
    z = {1: [1.0, -1.0], 2: [0.5, 2.0], 3: [-1.0, 0.5], 4: [2.0, 1.0]}
    fixed_noise(monkeypatch, {mix(0, t): v for t, v in z.items()})
    xs, snapshots, seen = [], [], []
    with torch.no_grad():
        for t in range(1, 5):
            model.seen.clear()
            opt.step(t, lambda probe: model(probe.data).item(), 0.05, None)
            xs.append(model.x.tolist())
            snapshots.append(opt.snapshot[0].tolist())
            seen.append(list(model.seen))
    # Step 1, anchor: c = ∇F(1, 1)·z₁ = (1, 4)·(1, −1) = −3; x̃ = (1, 1); x₁ = x₀ + 0.3 z₁.
    assert [d for d, _ in seen[0]] == ["full", "full"]
    assert xs[0] == pytest.approx([1.3, 0.7], abs=1e-6)
    # Step 2: c_B(x₁) = (2.6, 0.7)·z₂ = 2.7, c_B(x̃) = (2, 1)·z₂ = 3;
    # x₂ = x₁ − 0.05 [(2.7 − 3) z₂ + (−3) z₁] = (1.3, 0.7) − 0.05 (−3.15, 2.4).
    assert [d for d, _ in seen[1]] == ["batch"] * 4
    close_to(seen[1][2:], [[1.05, 1.2], [0.95, 0.8]])  # x̃ ± εz₂
    assert xs[1] == pytest.approx([1.4575, 0.58], abs=1e-6)
    # Step 3, same snapshot and G: c_B(x₂) = (2.915, 0.58)·z₃ = −2.625, c_B(x̃) = −1.5;
    # x₃ = x₂ − 0.05 [(−1.125) z₃ + (−3) z₁] = x₂ − 0.05 (−1.875, 2.4375).
    close_to(seen[2][2:], [[0.9, 1.05], [1.1, 0.95]])  # x̃ ± εz₃
    assert xs[2] == pytest.approx([1.55125, 0.458125], abs=1e-6)
    assert snapshots[:3] == [[1.0, 1.0]] * 3
    # Step 4, a new anchor at x₃: c = ∇F(x₃)·z₄ = (1.55125, 1.8325)·(2, 1) = 4.935.
    assert [d for d, _ in seen[3]] == ["full", "full"]
    assert snapshots[3] == xs[2]
    assert xs[3] == pytest.approx([1.55125 - 0.987, 0.458125 - 0.4935], abs=1e-6)
    assert opt.logged_loss([1.0, 3.0, 10.0, 20.0]) == 2.0  # the probes at x, not the snapshot's


@pytest.mark.parametrize("name", ["hizoo", "mezo_svrg"])
def test_probes_restore_parameters_bitwise_in_bf16(name: str) -> None:
    model = TwoLayer(torch.bfloat16)
    opt = build(model, config(name, eps=1e-2), seed=0)
    for t in range(1, 7):
        before = [p.detach().clone() for p in model.parameters()]
        opt.begin_step(t)
        losses = []
        with torch.no_grad():
            for probe in opt.probes():
                with opt.perturb(probe):
                    losses.append(model().item())
        assert losses[0] != losses[1]  # the forwards really saw perturbed weights
        for b, p in zip(before, model.parameters(), strict=True):
            assert torch.equal(b.view(torch.uint8), p.detach().view(torch.uint8))
        opt.estimate(losses)
        opt.update(1e-2, None)


@pytest.mark.parametrize("layers", [4, 30])  # the tied head bigger than a block (chunked), or not
@pytest.mark.parametrize("name", ["hizoo", "mezo_svrg"])
def test_the_forward_sees_exactly_its_probe_weights(name: str, layers: int) -> None:
    """Blocks, embedding rows and head chunks together: HiZOO's forward sees x + ε u/√H with an H
    that is no longer 1; MeZO-SVRG's snapshot probe sees x̃ + εz with x̃ no longer x."""
    model = tiny_llama(torch.float32, layers)
    opt = build(model, config(name, eps=1e-2), seed=1)
    ids = torch.tensor([[5, 7, 5, 290, 0, 7]])
    with torch.no_grad():
        for t in range(1, 3):
            opt.step(t, lambda probe: float(model(input_ids=ids, labels=ids).loss), 1e-2, None)
        probe = Probe(+1.0, at="snapshot" if name == "mezo_svrg" else "live")
        opt.begin_step(3)
        with opt.perturb(probe):
            hooked = float(model(input_ids=ids, labels=ids).loss)
            direction = [opt.direction(i) for i in range(len(opt.params))]
        if name == "hizoo":
            assert float(opt.hessian[0].std()) > 0.1  # H really scales the direction
        clean = float(model(input_ids=ids, labels=ids).loss)
        opt.close()  # no hooks: set the weights by hand
        for seg, z in zip(opt.flat.segments, direction, strict=True):
            seg.param.copy_(opt.base_weights(seg.run()).view_as(z) + opt.cfg.eps * z)
        manual = float(model(input_ids=ids, labels=ids).loss)
    assert abs(hooked - clean) > 1e-3
    assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0)


@pytest.mark.parametrize("name", ["hizoo", "mezo_svrg"])
def test_state_round_trip_continues_exactly(name: str) -> None:
    """An optimizer rebuilt from state_dict (and the weights) continues bitwise like the original."""

    def quadratic_steps(model, opt, steps: range) -> None:
        with torch.no_grad():
            for t in steps:
                opt.step(t, lambda probe: model().item(), 1e-2, None)

    cfg = config(name, eps=1e-2)
    model = Quadratic(d=40, seed=0)
    opt = build(model, cfg, seed=3)
    quadratic_steps(model, opt, range(1, 4))  # ends after an anchor for SVRG (q = 2): 1 and 3
    state, weights = copy.deepcopy(opt.state_dict()), model.x.detach().clone()
    twin = Quadratic(d=40, seed=1)
    twin_opt = build(twin, cfg, seed=3)
    with torch.no_grad():
        twin.x.copy_(weights)
    twin_opt.load_state_dict(state)
    quadratic_steps(model, opt, range(4, 8))
    quadratic_steps(twin, twin_opt, range(4, 8))
    assert torch.equal(model.x, twin.x)
    assert not torch.equal(model.x, weights)


def test_svrg_anchor_lr_defaults_to_ten_times_lr() -> None:
    """η_fb follows the authors (10–100× η_mb): lr_full_ratio × the runner's lr unless lr_full is set,
    so a sweep over optimizer.lr keeps the ratio (doc §6, note of 2026-12-07)."""
    cfg = compose(["optimizer=mezo_svrg"]).optimizer
    assert (cfg.lr, cfg.lr_full, cfg.lr_full_ratio) == (1e-6, None, 10)
    opt = build(Quadratic(d=4), get("mezo_svrg").Config(name="mezo_svrg", fused=False), seed=0)
    assert opt.lrs(1e-6) == (1e-6, pytest.approx(1e-5, rel=1e-12))
    assert opt.lrs(3e-5) == (3e-5, pytest.approx(3e-4, rel=1e-12))
    fixed = build(Quadratic(d=4), config("mezo_svrg", lr_full=1e-4), seed=0)
    assert fixed.lrs(3e-5) == (3e-5, 1e-4)


# Epoch means of the constructed run (anneal_every = E = 2 steps an epoch), and the steps that anneal:
# the check at the start of step kE + 1 (k > 4 epochs done) compares epoch k with epoch k − 2.
EPOCH_MEANS = [1.0, 2.0, 3.0, 4.0, 4.2, 4.1, 5.0, 6.0, 5.1, 5.5, 5.0]
#  k = 5: 4.2 > 1.05·3   → anneal at step 11       k = 6: 4.1 < 1.05·4   → none at 13
#  k = 7: 5.0 > 1.05·4.2 → anneal at step 15       k = 8: 6.0 > 1.05·4.1 → anneal at 17
#  k = 9: 5.1 < 1.05·5   → none (5.1 vs 6 is not compared)
#  k = 10: 5.5 > 1.05·5.1 = 5.355 against the epoch before, but 5.5 < 1.05·6: none at 21
#  (epochs 1–4 rise fastest of all, but no check comes before 4 epochs are done)
ANNEALED_AT = {11: 1, 15: 2, 17: 3}


def test_svrg_annealing_fires_on_a_constructed_loss_sequence() -> None:
    """The reference's rule on logged losses fed through `replay` (losses in, no forwards): both lrs
    ÷ 5 at the right steps, floors 1e-4 (η_mb) and 1e-3 (η_fb) here, never raised by a floor."""
    model = Quadratic(d=8)
    floors = {"anneal_min_lr": 1e-4, "anneal_min_lr_full": 1e-3}
    opt = build(model, config("mezo_svrg", anneal=True, anneal_every=2, lr_full=None, **floors), seed=0)
    lr, k, seen = 1e-3, 0, {}
    expected = {0: (1e-3, 1e-2), 1: (2e-4, 2e-3), 2: (1e-4, 1e-3), 3: (1e-4, 1e-3)}
    for t in range(1, 2 * len(EPOCH_MEANS) + 1):
        mean = EPOCH_MEANS[(t - 1) // 2]
        loss = mean - 0.5 if t % 2 else mean + 0.5  # the epoch's two steps average to its mean
        opt.replay(t, [loss, loss, 0.0, 0.0], lr, None)  # c = 0: x stays; the probes at x give the loss
        k = ANNEALED_AT.get(t, k)
        assert opt.anneals == k, t
        seen[t] = opt.lrs(lr)
        assert seen[t] == pytest.approx(expected[k], rel=1e-12), t
        assert opt.logged_lr(lr) == seen[t][0]
    assert opt.epochs_done == len(EPOCH_MEANS) - 1  # the last epoch closes at the start of the next
    assert opt.epoch_means == pytest.approx([6.0, 5.1, 5.5])
    # A floor never lifts an lr that starts below it; the anchor step moves by the annealed η_fb.
    assert opt.lrs(1e-5)[0] == 1e-5
    x = model.x.detach().clone()
    t = 2 * len(EPOCH_MEANS) + 1  # an anchor step (q = 2: the odd steps)
    opt.replay(t, [5.0 + 1e-3, 5.0 - 1e-3], lr, None)  # c = 2e-3 / 2ε = 1
    assert opt.anchor_step == t
    z = opt.direction(0)
    torch.testing.assert_close(model.x.detach(), x - 1e-3 * opt.projected_grad * z, rtol=0, atol=1e-7)


def test_svrg_annealing_state_round_trips() -> None:
    """The window, k and the epoch count live in the state_dict: a twin loaded mid-epoch anneals alike."""
    cfg = config("mezo_svrg", anneal=True, anneal_every=2)
    losses = [m + d for m in EPOCH_MEANS for d in (-0.5, 0.5)]
    a = build(Quadratic(d=8), cfg, seed=0)
    for t in range(1, 10):
        a.replay(t, [losses[t - 1]] * 4, 1e-3, None)
    b = build(Quadratic(d=8), cfg, seed=0)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for opt in (a, b):
        for t in range(10, len(losses) + 1):
            opt.replay(t, [losses[t - 1]] * 4, 1e-3, None)
    assert (a.anneals, a.epochs_done, a.epoch_sum, a.epoch_means) == (
        b.anneals,
        b.epochs_done,
        b.epoch_sum,
        b.epoch_means,
    )
    assert a.anneals == 3


def test_svrg_annealing_needs_an_epoch_on_the_quadratic() -> None:
    opt = build(Quadratic(d=4), config("mezo_svrg", anneal=True), seed=0)
    with pytest.raises(zo.ZOError, match="set optimizer.anneal_every"):
        opt.set_data(0, 8)
    opt.set_data(10, 4)  # a training set of 10 in batches of 4: 3 steps an epoch, as the reference's loader
    assert opt.epoch_steps == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr_full=-1", "optimizer.lr_full=-1 is invalid: allowed lr_full >= 0, or null"),
        ("optimizer.lr_full_ratio=0", "optimizer.lr_full_ratio=0 is invalid: allowed lr_full_ratio > 0"),
        ("optimizer.anneal=maybe", "optimizer.anneal=maybe is invalid: allowed true or false"),
        ("optimizer.anneal_factor=0.5", "optimizer.anneal_factor=0.5 is invalid: allowed anneal_factor >= 1"),
        ("optimizer.anneal_every=-1", "optimizer.anneal_every=-1 is invalid: allowed anneal_every >= 0"),
        ("optimizer.anneal_min_lr=-1", "optimizer.anneal_min_lr=-1 is invalid"),
        ("optimizer.anneal_min_lr_full=-1", "optimizer.anneal_min_lr_full=-1 is invalid"),
    ],
)
def test_svrg_bad_keys_are_one_line_config_errors(override: str, message: str) -> None:
    validate(compose(["optimizer=mezo_svrg", "optimizer.anneal=true", "optimizer.lr_full=1e-5"]))
    with pytest.raises(ConfigError) as err:
        validate(compose(["optimizer=mezo_svrg", override]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
