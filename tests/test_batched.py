"""R problems as rows of one parameter (zo.optim.base.Rows): a batch is exactly R separate runs, and
a row that diverges is marked dead without touching the others or stopping the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zo.optim.base
from zo import ZOError
from zo.optim import build
from zo.optim.base import OptimConfig
from zo.quadratic import Quadratics, spectrum, start_point

D, STEPS = 16, 20
SIGMA = spectrum(D, D**3)
# (η, β, θ) per row: every per-row number differs between rows
SETTINGS = [(1e-2, 0.9, 1.2), (3e-3, 0.99, 1.4), (2e-2, 0.8, 1.5)]


def column(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1)


def batched_run(name: str, x0: torch.Tensor, settings: list[tuple], unit_u: bool):
    lr, beta, theta = (column(list(v)) for v in zip(*settings, strict=True))
    model = Quadratics(x0, SIGMA, scale=0.5)
    cfg = OptimConfig(name=name, eps=0.01, fused=False, theta=theta, unit_u=unit_u)
    opt = build(model, cfg, seed=5)
    with torch.no_grad():
        for t in range(1, STEPS + 1):
            opt.step(t, lambda probe: model(), lr, beta)
    return model.x.detach(), opt


def single_run(name: str, x0: torch.Tensor, setting: tuple, unit_u: bool, row: int, monkeypatch):
    """Row `row` run on its own: a one-row model, float numbers, its noise at the batch's flat indices."""
    positions = zo.optim.base.positions
    monkeypatch.setattr(zo.optim.base, "positions", lambda s, n, device: positions(s + row * D, n, device))
    lr, beta, theta = setting
    model = Quadratics(x0[None], SIGMA, scale=0.5)
    opt = build(model, OptimConfig(name=name, eps=0.01, fused=False, theta=theta, unit_u=unit_u), seed=5)
    with torch.no_grad():
        for t in range(1, STEPS + 1):
            opt.step(t, lambda probe: float(model()), lr, beta)
    monkeypatch.setattr(zo.optim.base, "positions", positions)
    return model.x.detach()[0]


@pytest.mark.parametrize(
    ("name", "unit_u"),
    [
        (n, False)
        for n in ("mezo", "mezo_momentum", "conmezo", "meazo", "zo_adam", "hizoo", "fzoo", "sparse_mezo")
    ]
    + [("r_adazo", False), ("conmezo", True)],
)
def test_a_batch_of_rows_is_separate_runs(name: str, unit_u: bool, monkeypatch) -> None:
    x0 = torch.stack([start_point(D, 10.0, seed) for seed in range(len(SETTINGS))])
    batched, opt = batched_run(name, x0, SETTINGS, unit_u)
    assert not opt.rows.dead.any()
    for row, setting in enumerate(SETTINGS):
        alone = single_run(name, x0[row], setting, unit_u, row, monkeypatch)
        moved = 1e-3 if name == "sparse_mezo" else 1e-2  # Sparse-MeZO moves ⌊0.2·16⌋ = 3 entries of 16
        assert (alone - x0[row]).abs().max() > moved  # it moved
        torch.testing.assert_close(batched[row], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["mezo", "conmezo"])
def test_a_diverging_row_is_marked_dead_and_leaves_the_others_alone(name: str) -> None:
    x0 = start_point(D, 10.0, 0).expand(3, D)
    fine, _ = batched_run(name, x0, SETTINGS, unit_u=False)
    # The middle row's x² overflows fp32 after one step; its losses are inf, then NaN. (Merely too
    # large an η can also leave a row stuck at a huge finite f, where ±λz is below f's resolution.)
    wild = [SETTINGS[0], (1e20, 0.9, 1.2), SETTINGS[2]]
    mixed, opt = batched_run(name, x0, wild, unit_u=False)
    assert opt.rows.dead.view(-1).tolist() == [False, True, False]
    assert not torch.isfinite(mixed[1]).all()
    torch.testing.assert_close(mixed[[0, 2]], fine[[0, 2]], rtol=0, atol=0)


def test_fzoo_skips_a_row_whose_probes_all_see_one_loss_and_moves_the_others() -> None:
    """At x = 0 every Rademacher probe sees f = ε²Σσ_i exactly, so that row's σ is 0: it alone is
    skipped (not dead, not moved, counted), and the other rows are bitwise those of a batch without it."""
    x0 = torch.stack([start_point(D, 10.0, seed) for seed in range(len(SETTINGS))])
    fine, _ = batched_run("fzoo", x0, SETTINGS, unit_u=False)
    x0[1] = 0.0
    with pytest.warns(RuntimeWarning, match="fzoo skipped a step in some rows"):
        mixed, opt = batched_run("fzoo", x0, SETTINGS, unit_u=False)
    assert not opt.rows.dead.any()
    assert opt.skipped.view(-1).tolist() == [0, STEPS, 0]
    assert torch.equal(mixed[1], torch.zeros(D))
    torch.testing.assert_close(mixed[[0, 2]], fine[[0, 2]], rtol=0, atol=0)


def test_sparse_mezo_thresholds_are_per_row() -> None:
    """Each row keeps its own k = ⌊(1 − s)·d⌋ smallest |x| active, whatever the other rows' scale."""
    x0 = torch.stack([start_point(D, norm, seed) for seed, norm in enumerate((10.0, 1e-3, 1e3))])
    opt = build(Quadratics(x0, SIGMA), OptimConfig(name="sparse_mezo", fused=False), seed=0)
    (h,) = opt.thresholds
    assert h.shape == (3, 1)
    assert ((x0.abs() <= h).sum(1) == int(0.2 * D)).all()


def test_rows_need_an_optimizer_that_runs_them() -> None:
    model = Quadratics(torch.ones(3, D), SIGMA)
    with pytest.raises(ZOError, match="cannot run a model of 3 problems as rows"):
        build(model, OptimConfig(name="loren", fused=False), seed=0)

    class TwoTensors(nn.Module):
        zo_rows = 3

        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Parameter(torch.ones(3, D)), nn.Parameter(torch.ones(3))

    with pytest.raises(ZOError, match="one trainable"):
        build(TwoTensors(), OptimConfig(name="mezo", fused=False), seed=0)
