"""The optimizers against the math: moments, cone geometry, schedule, exact restore, rounding.

Eager kernels throughout (fused=False): tests/test_kernels.py checks the compiled ones against them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zo.fused import kernel
from zo.noise import normal_at, positions
from zo.optim import build, names
from zo.optim.base import OptimConfig
from zo.optim.mezo import mezo_step
from zo.quadratic import Quadratic, Quadratics
from zo.rounding import round_to
from zo.schedule import BetaSchedule


class Linear(nn.Module):
    """f(x) = aᵀx: its true gradient is `a`, and the two-point estimate is exact along z."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.x = nn.Parameter(torch.zeros_like(a))

    def forward(self) -> torch.Tensor:
        return (self.a * self.x).sum()


def zo_step(opt, model: nn.Module, step: int, lr: float = 0.0, beta: float | None = 0.9) -> float:
    with torch.no_grad():
        opt.step(step, lambda probe: model().item(), lr, beta)
    return opt.projected_grad


def mean_estimate(opt, model: Linear, n: int) -> torch.Tensor:
    """Monte-Carlo mean of g = p·z, without moving x (lr = 0) or the momentum (estimates only)."""
    total = torch.zeros_like(model.a)
    for t in range(n):
        opt.begin_step(t)
        with torch.no_grad(), opt.perturb(+1):
            plus = model().item()
        with torch.no_grad(), opt.perturb(-1):
            minus = model().item()
        total += opt.estimate([plus, minus]) * opt.direction(0)
    return total / n


def test_registry_lists_the_three_optimizers() -> None:
    assert {"mezo", "mezo_momentum", "conmezo"} <= set(names())


def test_mezo_estimator_is_unbiased() -> None:
    a = torch.linspace(-1.0, 2.0, 10)
    model = Linear(a)
    opt = build(model, OptimConfig(name="mezo", eps=1e-2, fused=False), seed=1)
    est = mean_estimate(opt, model, 6000)
    # std of the mean ≈ sqrt((d+1)/n)·‖a‖ ≈ 0.043‖a‖; 0.15 is > 3σ, a factor-2 error would be 1.0
    assert (est - a).norm() / a.norm() < 0.15


@pytest.mark.parametrize("unit_u", [True, False])
def test_cone_estimator_mean_and_second_moments(unit_u: bool) -> None:
    """20,000 draws of z around a fixed m̂, as 20,000 rows of one step (`Rows`: each row is its own
    problem with its own √d, ‖m‖ and u, from flat indices no other row uses; test_batched checks rows
    against separate runs), not 20,000 steps of one problem: the same draws' law in one call."""
    n, d, theta = 20000, 8, 1.2
    a = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5, -0.5, 2.0, 1.0])
    cfg = OptimConfig(name="conmezo", eps=1e-2, theta=theta, unit_u=unit_u, fused=False)
    opt = build(Quadratics(torch.zeros(n, d), torch.ones(d)), cfg, seed=3)
    m_hat = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0, 0]) / math.sqrt(2)
    opt.momentum[0].view(n, d).copy_(m_hat)
    opt.m_norm = torch.ones(n, 1)
    opt.begin_step(0)
    z = opt.direction(0).view(n, d)
    proj = z @ a
    total, second, g_sq = (
        (proj[:, None] * z).sum(0),
        float((proj**2).sum()),
        float((proj**2 * (z * z).sum(1)).sum()),
    )
    c2, s2 = math.cos(theta) ** 2, math.sin(theta) ** 2
    alpha, a_sq = float(m_hat @ a), float(a @ a)
    expected = d * c2 * alpha * m_hat + s2 * a
    assert (total / n - expected).norm() / expected.norm() < 0.08
    # E[(zᵀa)²] = d cos²θ (m̂ᵀa)² + sin²θ ‖a‖², the quantity Lemma 2's bound is built from
    assert second / n == pytest.approx(d * c2 * alpha**2 + s2 * a_sq, rel=0.05)
    # Second moment of the estimator g = (zᵀa) z. With ‖u‖ = 1, ‖z‖² = d(1 + 2cs m̂ᵀu) and only
    # E[uuᵀ] = I/d and odd moments enter:
    #   E‖g‖² = d² cos²θ α² + d sin²θ ‖a‖² + 4d cos²θ sin²θ α²  ≤  d (d cos²θ + sin²θ + 4 cos²θ sin²θ) ‖a‖²
    # (the bound since α² ≤ ‖a‖²). u = N(0, I)/√d adds 2 sin⁴θ ‖a‖² (E[(uᵀa)²‖u‖²] = (d+2)‖a‖²/d²).
    exact = d * d * c2 * alpha**2 + d * s2 * a_sq + 4 * d * c2 * s2 * alpha**2
    if not unit_u:
        exact += 2 * s2 * s2 * a_sq
    assert g_sq / n == pytest.approx(exact, rel=0.06)


@pytest.mark.parametrize("unit_u", [True, False])
def test_cone_geometry_in_high_dimension(unit_u: bool) -> None:
    d, theta = 200_000, 1.35
    model = Linear(torch.zeros(d))
    opt = build(model, OptimConfig(name="conmezo", theta=theta, unit_u=unit_u, fused=False), seed=0)
    m_hat = opt.momentum[0].float() / opt.m_norm
    for t in range(3):
        opt.begin_step(t)
        z = opt.direction(0)
        assert float(z @ m_hat) / float(z.norm()) == pytest.approx(math.cos(theta), abs=0.01)
        assert float(z @ z) / d == pytest.approx(1.0, abs=0.02)


def test_cone_at_right_angle_is_mezo() -> None:
    model = Linear(torch.zeros(50))
    cone = build(model, OptimConfig(name="conmezo", theta=math.pi / 2, unit_u=False, fused=False), seed=7)
    mezo = build(model, OptimConfig(name="mezo", fused=False), seed=7)
    for t in (1, 2, 3):
        cone.begin_step(t)
        mezo.begin_step(t)
        torch.testing.assert_close(cone.direction(0), mezo.direction(0))


@pytest.mark.parametrize(
    ("total", "t", "expected"),
    [
        (20000, 0, 0.1),
        (20000, 200, 0.1),
        (20000, 1100, 0.99 - 0.89 / (1 + 8 * 0.5**1.8) ** 3),
        (20000, 2000, 0.99 - 0.89 / 9**3),
        (20000, 5000, 0.99),
        (10000, 0, 0.1),
        (10000, 200, 0.99 - 0.89 / (1 + 8 * (100 / 900) ** 1.8) ** 3),
        (10000, 1100, 0.99),
        (10000, 1000, 0.99 - 0.89 / 9**3),
        (10000, 5000, 0.99),
    ],
)
def test_beta_warmup_values(total: int, t: int, expected: float) -> None:
    assert BetaSchedule(beta_final=0.99, total_steps=total)(t) == pytest.approx(expected, abs=1e-12)


def test_beta_warmup_ramp_is_monotone_and_constant_schedule_is_flat() -> None:
    sched = BetaSchedule(beta_final=0.95, total_steps=20000)
    values = [sched(t) for t in range(0, 3000, 10)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert BetaSchedule(beta_final=0.95, kind="constant")(0) == 0.95


class TwoLayer(nn.Module):
    """Tied weight, bias, norm: the cases that break naive in-place perturbation."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.emb = nn.Embedding(17, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 17)
        self.head.weight = self.emb.weight  # tied
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.to(dtype)
        self.ids = torch.arange(17)

    def forward(self) -> torch.Tensor:
        return self.head(self.norm(self.emb(self.ids))).float().logsumexp(-1).mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mezo", "conmezo"])
def test_perturbation_restores_parameters_bitwise(dtype: torch.dtype, name: str) -> None:
    model = TwoLayer(dtype)
    opt = build(model, OptimConfig(name=name, eps=1e-2, fused=False), seed=0)
    for t in range(1, 31):
        probe_and_update(opt, model, t, beta=0.9)


def probe_and_update(opt, model: nn.Module, t: int, beta: float | None) -> None:
    """Step t by hand: the ±λ forwards differ (they saw perturbed weights), the weights come back
    bit for bit after them, then the estimate and the update run."""
    before = [p.detach().clone() for p in model.parameters()]
    opt.begin_step(t)
    with torch.no_grad():
        with opt.perturb(+1):
            plus = model().item()
        with opt.perturb(-1):
            minus = model().item()
    assert plus != minus
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(b.view(torch.uint8), p.detach().view(torch.uint8))
    opt.estimate([plus, minus])
    opt.update(1e-3, beta)


def test_a_forward_that_raises_still_restores() -> None:
    model = TwoLayer(torch.float32)
    opt = build(model, OptimConfig(name="mezo", fused=False), seed=0)
    before = model.emb.weight.detach().clone()
    opt.begin_step(1)
    with pytest.raises(RuntimeError), torch.no_grad(), opt.perturb(+1):
        model.emb(model.ids)  # pre-hook swaps the weight, the post-hook runs
        model.norm.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
        model()
    assert torch.equal(before, model.emb.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stochastic_rounding_is_unbiased(dtype: torch.dtype) -> None:
    grid = torch.tensor([1.0, -3.0, 1e-3, 0.0]).to(dtype)
    bits = grid.view(torch.int16)
    up = torch.where(grid >= 0, bits + 1, bits - 1).view(dtype).float()  # next value up in magnitude
    gap = (up - grid.float()).abs()
    x = grid.float() + 0.3 * (up - grid.float())  # 0.3 of the way to the next representable value
    assert (x.to(dtype).float() == grid.float()).all()  # round-to-nearest loses the 0.3 gap
    n = 20000
    total = torch.zeros(4, dtype=torch.float64)
    idx = positions(0, 4, x.device)
    for s in range(n):
        total += round_to(x, dtype, idx, seed=s, stochastic=True).double()
    # each draw lands on grid or up with p = 0.3; the std of the mean is ≈ 0.0032 gap
    assert ((total / n - x.double()).abs() / gap < 0.015).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tiny_updates_survive_low_precision_only_with_stochastic_rounding(dtype: torch.dtype) -> None:
    for stochastic in (True, False):
        model = Linear(torch.ones(4096))
        model.x.data = torch.ones(4096, dtype=dtype)
        opt = build(model, OptimConfig(name="mezo", stochastic_rounding=stochastic, fused=False), seed=0)
        for t in range(1, 21):  # steps of ~1e-5, far below half an ulp (≥ 4.9e-4) at 1.0
            zo_step(opt, model, t, lr=3e-7)
        moved = int((model.x.data.float() != 1.0).sum())
        assert (moved > 0) is stochastic


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_expected_update_is_preserved(dtype: torch.dtype, fused: bool) -> None:
    """The MeZO update kernel on low-precision weights moves them by lr·p·z on average."""
    step_kernel = kernel(mezo_step, fused)
    n_elems, noise_seed = 512, 12345
    z = normal_at(positions(0, n_elems, torch.device("cpu")), noise_seed)
    gap = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10  # one ulp just above 1.0 (half that below)
    step = 0.1 * gap / float(z.abs().max())  # moves of up to 0.1 ulp: nearest rounding keeps 1.0
    total = torch.zeros(n_elems, dtype=torch.float64)
    n = 4000
    for t in range(n):
        x = torch.ones(n_elems, dtype=dtype)
        step_kernel(x, 0, noise_seed, "gaussian", t, 1.0, step, True)
        total += x.double()
    exact = 1.0 - step * z.double()
    # sampling noise: 5σ ≈ 0.025 gap; nearest rounding would err by up to 0.1 gap
    assert float((total / n - exact).abs().max()) < 0.04 * gap
    assert float(((1.0 - step * z).to(dtype).double() - exact).abs().max()) > 0.08 * gap


@pytest.mark.parametrize("name", ["mezo", "mezo_momentum", "conmezo"])
def test_each_optimizer_lowers_the_quadratic_and_is_deterministic(name: str) -> None:
    finals = []
    for _ in range(2):
        model = Quadratic(d=200, seed=0)
        opt = build(model, OptimConfig(name=name, eps=1e-2, theta=1.4, fused=False), seed=5)
        start = model().item()
        for t in range(1, 401):
            zo_step(opt, model, t, lr=5e-3, beta=0.9)
        finals.append(model.x.detach().clone())
        assert model().item() < 0.5 * start
    assert torch.equal(finals[0], finals[1])


def test_different_seeds_give_different_trajectories() -> None:
    xs = []
    for seed in (0, 1):
        model = Quadratic(d=50, seed=0)
        opt = build(model, OptimConfig(name="conmezo", eps=1e-2, fused=False), seed=seed)
        for t in range(1, 20):
            zo_step(opt, model, t, lr=1e-2)
        xs.append(model.x.detach().clone())
    assert not torch.equal(xs[0], xs[1])


def test_untouched_parameter_is_reported() -> None:
    class Sneaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)
            self.extra = nn.Linear(3, 1)

        def forward(self) -> torch.Tensor:
            return self.lin(self.extra.weight).sum()  # reads extra.weight outside extra's forward

    from zo import ZOError

    model = Sneaky()
    opt = build(model, OptimConfig(name="mezo", fused=False), seed=0)
    opt.begin_step(1)
    with pytest.raises(ZOError, match="not perturbed"), torch.no_grad(), opt.perturb(+1):
        model()


def test_bf16_momentum_buffer_still_descends() -> None:
    model = Quadratic(d=200, seed=0)
    opt = build(model, OptimConfig(name="conmezo", eps=1e-2, momentum_dtype="bf16", fused=False), seed=5)
    assert opt.momentum[0].dtype == torch.bfloat16 and model.x.dtype == torch.float32
    start = model().item()
    for t in range(1, 401):
        zo_step(opt, model, t, lr=5e-3, beta=0.9)
    assert model().item() < 0.5 * start


def test_tied_embedding_and_head_are_never_perturbed_whole() -> None:
    """The embedding perturbs only the rows it looks up, the head (bigger than a block) one chunk
    of rows at a time: no perturbed copy of the matrix, and every other weight drawn once."""
    model = TwoLayer(torch.float32)  # emb.weight is also head.weight
    model.ids = torch.tensor([3, 3, 5])
    opt = build(model, OptimConfig(name="mezo", fused=False), seed=0)
    drawn: list[int] = []
    original = opt._perturbed
    opt._perturbed = lambda run: drawn.append(run.end - run.start) or original(run)
    opt.begin_step(1)
    with torch.no_grad(), opt.perturb(+1):
        model()
    vocab, width = model.emb.weight.shape
    assert drawn.count(width) == vocab  # the head in chunks of one row (a block is 7 weights here)
    assert sum(drawn) == opt.d  # and with its bias and the norm: each weight exactly once


def test_a_run_that_cannot_move_says_so() -> None:
    """Weights so large that ±λz vanishes in fp32: every estimate is exactly 0, silently, without this."""
    model = Quadratic(d=20, init_norm=1e17, seed=0)
    opt = build(model, OptimConfig(name="mezo", eps=1e-3, fused=False), seed=0)
    with pytest.warns(RuntimeWarning, match="raise optimizer.eps"):
        for t in range(1, 26):
            assert zo_step(opt, model, t) == 0.0
