"""LOREN against zo-methods.md §1: the worked example, the score-function update of a, the sampling
covariance, the block hooks (embedding rows, chunked head), exact restore, refused configs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import zo.noise
import zo.optim.loren as loren
from tests.conftest import compose
from tests.test_kernels import tiny_llama
from tests.test_optim import TwoLayer
from zo.config import ConfigError, validate
from zo.optim import build
from zo.optim.base import Probe


def inject_noise(monkeypatch: pytest.MonkeyPatch, opt, step: int, us: list[torch.Tensor]) -> None:
    """Probe k of `step` draws u_k (a flat vector over all parameters) instead of its seeded noise."""
    opt.begin_step(step)
    table = {opt.noise_seed(k): u.float() for k, u in enumerate(us)}
    monkeypatch.setattr(zo.noise, "normal_at", lambda idx, seed: table[seed][idx])  # what noise_at returns


class Half(nn.Module):
    """The worked example's f(x) = ½‖x‖² over one 1×2 block."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.ones(1, 2))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.x**2).sum()


@pytest.mark.parametrize(
    ("sequential", "x", "m"),
    [(True, [0.883645, 0.913395], [0.551153, 0.866053]), (False, [0.938761, 0.913395], [0.612392, 0.866053])],
)
def test_worked_example(monkeypatch: pytest.MonkeyPatch, sequential: bool, x: list, m: list) -> None:
    model = Half()
    cfg = {"name": "loren", "eps": 0.1, "queries": 2, "damping": 1.0, "lr_cov": 0.1, "momentum": 0.9}
    opt = build(model, cfg | {"sequential": sequential, "fused": False}, seed=0)
    opt.a[0] = torch.tensor([1.0, 0.0])
    inject_noise(monkeypatch, opt, 1, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    with torch.no_grad():
        losses = opt.step(1, lambda probe: model().item(), 0.1, None)
    assert losses == pytest.approx([0.931789, 1.105], abs=1e-6)
    assert opt.logged_loss(losses) == pytest.approx(1.018395, abs=1e-6)
    assert model.x.detach()[0].tolist() == pytest.approx(x, abs=1e-6)
    assert opt.momentum[0].tolist() == pytest.approx(m, abs=1e-6)
    assert opt.a[0].tolist() == pytest.approx([0.999957, 0.0], abs=1e-6)


class MatrixAndVector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, 3, generator=gen))
        self.b = nn.Parameter(torch.randn(3, generator=gen))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.w**2).sum() + (self.b**3).sum() / 3 + (self.w @ self.b).sum()


def log_density(z: torch.Tensor, a: torch.Tensor, lam: float) -> torch.Tensor:
    """log N(z; 0, Σ) up to a constant, Σ = I − āāᵀ/(λ+s), ā = a tiled over z's rows."""
    bar = a.expand_as(z)
    s = (bar * bar).sum()
    return -0.5 * ((z * z).sum() + (bar * z).sum() ** 2 / lam) + 0.5 * torch.log((lam + s) / lam)


def reference_step(x, a, m, us, losses, c: dict, lr: float) -> tuple[list, list, torch.Tensor]:
    """The doc's update loop, literally, in float64: per probe (or summed), per block (w: a matrix
    with momentum and decay, b: a vector without), z = S u with S as a matrix, ∇a by autograd as
    √λ·∇_a log N(z; 0, Σ(ā)) (the doc's G summed over rows, i.e. through the tiling)."""
    K, eps, lam = len(losses), c["eps"], c["damping"]
    mean = sum(losses) / K
    w = [f - mean for f in losses]
    x, a, m = [t.double().clone() for t in x], [t.double().clone() for t in a], m.double().clone()
    totals = [[torch.zeros_like(t) for t in x], [torch.zeros_like(t) for t in a]]
    for k in range(K):
        for blk, u in enumerate(t.double() for t in us[k]):
            bar = a[blk].expand_as(u).flatten()  # non-sequential: a moves only at the end
            s = float(bar @ bar)
            gamma = (math.sqrt(lam) + math.sqrt(lam + s)) / (s * math.sqrt(lam + s))
            z = (
                (torch.eye(bar.numel(), dtype=bar.dtype) - gamma * torch.outer(bar, bar)) @ u.flatten()
            ).view_as(u)
            leaf = a[blk].clone().requires_grad_(True)
            (math.sqrt(lam) * log_density(z, leaf, lam)).backward()  # the score at this z
            d = w[k] * z / ((K - 1) * eps)
            grad = w[k] * eps**2 * leaf.grad / (K - 1)
            if blk == 1 and c["ref_vector_quirk"]:
                grad = grad.sum() * torch.ones_like(grad)
            if c["sequential"]:
                x[blk], a[blk], m = apply(x[blk], a[blk], m, d, grad, blk, c, lr)
            else:
                totals[0][blk] += d
                totals[1][blk] += grad
    if not c["sequential"]:
        for blk in range(2):
            x[blk], a[blk], m = apply(x[blk], a[blk], m, totals[0][blk], totals[1][blk], blk, c, lr)
    return x, a, m


def apply(x, a, m, d, grad, blk: int, c: dict, lr: float):
    decay, decay_a = (1 - lr * c["weight_decay"], 1 - c["lr_cov"] * c["weight_decay"]) if blk == 0 else (1, 1)
    if blk == 0:
        m = c["momentum"] * m + d
        d = m
    return decay * x - lr * d, decay_a * a - c["lr_cov"] * grad, m


@pytest.mark.parametrize(("sequential", "quirk"), [(True, False), (False, False), (True, True)])
def test_update_follows_the_reference_loop(
    monkeypatch: pytest.MonkeyPatch, sequential: bool, quirk: bool
) -> None:
    """K = 3 probes, weight decay, a 2×3 matrix and a vector, momentum already non-zero: x, M and a
    after one step equal the doc's loop (the one-pass closed form and the column-sum score)."""
    model = MatrixAndVector()
    c = {"eps": 0.3, "damping": 0.7, "lr_cov": 0.5, "momentum": 0.8, "weight_decay": 0.3}
    c |= {"sequential": sequential, "ref_vector_quirk": quirk}
    opt = build(model, {"name": "loren", "queries": 3, "fused": False, **c}, seed=0)
    gen = torch.Generator().manual_seed(1)
    opt.momentum[0][:6] = torch.randn(6, generator=gen)
    opt.a = [torch.randn(3, generator=gen), torch.randn(3, generator=gen)]
    us = [torch.randn(9, generator=gen) for _ in range(3)]
    x0 = [model.w.detach().clone(), model.b.detach().clone()]
    a0, m0 = [t.clone() for t in opt.a], opt.momentum[0][:6].view(2, 3).clone()
    inject_noise(monkeypatch, opt, 1, us)
    with torch.no_grad():
        losses = opt.step(1, lambda probe: model().item(), 0.2, None)
    x, a, m = reference_step(x0, a0, m0, [(u[:6].view(2, 3), u[6:]) for u in us], losses, c, lr=0.2)
    torch.testing.assert_close(model.w.detach().double(), x[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.b.detach().double(), x[1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(opt.momentum[0][:6].view(2, 3).double(), m, rtol=1e-6, atol=1e-6)
    for mine, ref, before in zip(opt.a, a, a0, strict=True):
        assert float((mine - before).abs().max()) > 1e-4  # a really moved
        torch.testing.assert_close(mine.double(), ref, rtol=1e-6, atol=1e-6)


def test_directions_have_the_covariance_of_the_search_distribution() -> None:
    """Monte-Carlo E[z zᵀ] over a 3×2 block against Σ = I − āāᵀ/(λ+s), whose variance along ā is
    λ/(λ+s) = 0.25 here (z ~ N(0, I) would give 1)."""
    model = nn.Linear(2, 3, bias=False)
    opt = build(model, {"name": "loren", "damping": 1.0, "queries": 4, "fused": False}, seed=0)
    opt.a[0] = torch.tensor([1.0, -1.0]) / math.sqrt(2)  # s = m‖a‖² = 3
    n, second = 1500, torch.zeros(6, 6, dtype=torch.float64)
    for t in range(n):
        opt.begin_step(t)
        for probe in opt.probes():
            opt.probe = probe
            z = opt.direction(0).flatten().double()
            second += torch.outer(z, z)
    bar = opt.a[0].double().repeat(3)
    sigma = torch.eye(6, dtype=torch.float64) - torch.outer(bar, bar) / (1.0 + 3.0)
    assert float((second / (4 * n) - sigma).abs().max()) < 0.07  # σ of an entry ≤ 0.018
    along = bar / bar.norm()
    assert float(along @ (second / (4 * n)) @ along) == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("layers", [4, 30])  # the tied head bigger than a block (chunked), or not
def test_the_forward_sees_exactly_x_plus_eps_z(layers: int) -> None:
    """Layer blocks, embedding rows and the tied head (whole or in chunks of rows, each needing the
    whole tensor's t) all perturb by ε z_k, z_k = S u_k."""
    model = tiny_llama(torch.float32, layers)
    cfg = {"name": "loren", "lr": 1e-2, "eps": 1e-2, "queries": 2, "lr_cov": 0.1, "fused": False}
    opt = build(model, cfg, seed=1)
    ids = torch.tensor([[5, 7, 5, 290, 0, 7]])
    with torch.no_grad():
        opt.step(1, lambda probe: float(model(input_ids=ids, labels=ids).loss), 1e-2, None)  # a, M moved
        opt.begin_step(2)
        clean = float(model(input_ids=ids, labels=ids).loss)
        with opt.perturb(Probe(1.0, 1)):
            hooked = float(model(input_ids=ids, labels=ids).loss)
        opt.close()
        for i, p in enumerate(opt.params):
            p.add_(1e-2 * opt.direction(i))
        manual = float(model(input_ids=ids, labels=ids).loss)
    assert abs(hooked - clean) > 1e-3
    assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0)


def test_perturbation_restores_bf16_parameters_bitwise() -> None:
    model = TwoLayer(torch.bfloat16)  # tied embedding/head, bias, norm
    opt = build(model, {"name": "loren", "eps": 1e-2, "queries": 3, "fused": False}, seed=0)
    with torch.no_grad():
        for t in range(1, 6):
            before = [p.detach().clone() for p in model.parameters()]
            opt.begin_step(t)
            losses = []
            for probe in opt.probes():
                with opt.perturb(probe):
                    losses.append(model().item())
                for b, p in zip(before, model.parameters(), strict=True):
                    assert torch.equal(b.view(torch.int16), p.detach().view(torch.int16))
            assert len(set(losses)) > 1  # the forwards saw different perturbed weights
            opt.estimate(losses)
            opt.update(1e-3, None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.queries=1", "optimizer.queries=1 is invalid: allowed queries >= 2"),
        ("optimizer.damping=0", "optimizer.damping=0 is invalid: allowed damping > 0"),
    ],
)
def test_config_refuses_one_probe_and_no_damping(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose(["optimizer=loren", override]))


@pytest.mark.parametrize("fused", [False, True])
def test_the_update_in_row_pieces_is_the_update_in_one_pass(
    monkeypatch: pytest.MonkeyPatch, fused: bool
) -> None:
    """A tensor's update runs in pieces of rows (bench/step.py: a whole embedding in one compiled call
    held three fp32 copies of it); the pieces land on bitwise the same x, M and a."""
    tokens = torch.arange(12).view(2, 6)
    results = []
    for whole in (True, False):
        monkeypatch.setattr(loren, "EAGER_PIECE", 70 * 32)  # 300×32 embedding: 8 × 36 rows (a block) + 12
        if whole:
            monkeypatch.setattr(loren.Loren, "_pieces_of", lambda self, i: [(0, self._rows[i])])
        model = tiny_llama(torch.float32, layers=2)
        opt = build(model, {"name": "loren", "queries": 3, "weight_decay": 0.1, "fused": fused}, seed=0)
        embedding = opt._index[id(model.model.embed_tokens.weight)]
        assert len(opt._pieces_of(embedding)) == (1 if whole else 9)
        with torch.no_grad():
            for t in (1, 2):
                opt.step(t, lambda probe, m=model: m(input_ids=tokens, labels=tokens).loss.item(), 1e-2, None)
        results.append([*(b.data.clone() for b in opt.flat.buffers), *opt.momentum, *opt.a])
        monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
