"""The first-order baselines against the formulas: Adam (the doc's §4 example, which is plain Adam on
given gradients), decoupled decay, SGD momentum; chunked gradient accumulation; state; config errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zo.runner
from tests.conftest import compose
from zo import ZOError
from zo.config import ConfigError, validate
from zo.optim import build
from zo.optim.base import Probe


class Linear(nn.Module):
    """f = Σ a_W·W + Σ a_b·b: the gradient is (a_W, a_b), set per step; W decays (2-D), b does not."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.W = nn.Parameter(w.clone())
        self.b = nn.Parameter(b.clone())
        self.a_w = torch.zeros_like(w)
        self.a_b = torch.zeros_like(b)

    def forward(self) -> torch.Tensor:
        return (self.a_w * self.W).sum() + (self.a_b * self.b).sum()


def step_with(opt, model: Linear, t: int, a_w, a_b, lr: float) -> list[float]:
    """One optimizer step whose gradient is (a_w, a_b), through a loss_at that behaves like the runner's."""
    model.a_w, model.a_b = torch.tensor(a_w), torch.tensor(a_b)

    def loss_at(probe: Probe) -> float:
        assert probe.grad and probe.scale == 0.0
        with torch.set_grad_enabled(probe.grad):
            loss = model()
            loss.backward()
        return float(loss.detach())

    return opt.step(t, loss_at, lr, None)


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_matches_the_doc_adam_example(fused: bool) -> None:
    """Doc §4: x = 0, η = 0.1, g₁ = (2, −1) → x = (−0.1, 0.1); g₂ = (0.5, 1) → x = (−0.183060, 0.094737)."""
    model = Linear(torch.zeros(1, 2), torch.zeros(0))
    opt = build(model, {"name": "adamw", "fused": fused}, seed=0)
    step_with(opt, model, 1, [[2.0, -1.0]], [], lr=0.1)
    torch.testing.assert_close(model.W.data, torch.tensor([[-0.1, 0.1]]), atol=1e-6, rtol=0)
    assert opt.projected_grad == pytest.approx(5**0.5)  # ‖∇f‖ is what `projected_grad` logs
    step_with(opt, model, 2, [[0.5, 1.0]], [], lr=0.1)
    torch.testing.assert_close(model.W.data, torch.tensor([[-0.183060, 0.094737]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(opt.reference_vector(0), torch.tensor([[0.23, 0.01]]))  # m, for alignment
    assert model.W.grad is None  # freed after the step


def test_adamw_decay_is_decoupled_and_skips_vectors() -> None:
    w0, b0, lr, wd, delta = torch.tensor([[1.0, -2.0]]), torch.tensor([0.5, 3.0]), 0.01, 0.1, 1e-8
    g_w, g_b = [[0.3, -4.0]], [2.0, -0.5]
    model = Linear(w0, b0)
    opt = build(model, {"name": "adamw", "weight_decay": wd, "fused": False}, seed=0)
    step_with(opt, model, 1, g_w, g_b, lr=lr)
    # step 1: m̂ = g, v̂ = g², so the Adam term is g / (|g| + δ)
    adam = [g / (abs(g) + delta) for g in g_w[0]]
    expected_w = [x * (1 - lr * wd) - lr * u for x, u in zip(w0[0].tolist(), adam, strict=True)]
    expected_b = [x - lr * g / (abs(g) + delta) for x, g in zip(b0.tolist(), g_b, strict=True)]
    torch.testing.assert_close(model.W.data, torch.tensor([expected_w]), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.b.data, torch.tensor(expected_b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_two_steps_match_the_formula(nesterov: bool) -> None:
    """g = ∇f + wd·x (W only), b₁ = g₁, b₂ = μ b₁ + g₂, x ← x − η (g + μ b if nesterov else b)."""
    lr, mu, wd = 0.1, 0.9, 0.5
    w, b = [1.0, -2.0], [0.5, 3.0]
    grads = [([0.3, -4.0], [2.0, -0.5]), ([1.0, 0.25], [-1.0, 1.5])]
    model = Linear(torch.tensor([w]), torch.tensor(b))
    cfg = {"name": "sgd", "momentum": mu, "nesterov": nesterov, "weight_decay": wd, "fused": False}
    opt = build(model, cfg, seed=0)
    buf_w = buf_b = None
    for t, (a_w, a_b) in enumerate(grads, start=1):
        step_with(opt, model, t, [a_w], a_b, lr=lr)
        g_w = [g + wd * x for g, x in zip(a_w, w, strict=True)]
        buf_w = g_w if buf_w is None else [mu * m + g for m, g in zip(buf_w, g_w, strict=True)]
        buf_b = a_b if buf_b is None else [mu * m + g for m, g in zip(buf_b, a_b, strict=True)]
        move_w = [g + mu * m for g, m in zip(g_w, buf_w, strict=True)] if nesterov else buf_w
        move_b = [g + mu * m for g, m in zip(a_b, buf_b, strict=True)] if nesterov else buf_b
        w = [x - lr * s for x, s in zip(w, move_w, strict=True)]
        b = [x - lr * s for x, s in zip(b, move_b, strict=True)]
        torch.testing.assert_close(model.W.data, torch.tensor([w]), atol=1e-6, rtol=0)
        torch.testing.assert_close(model.b.data, torch.tensor(b), atol=1e-6, rtol=0)
    torch.testing.assert_close(opt.reference_vector(1), torch.tensor(buf_b))


class SquaredError:
    """A stub objective: the batch's mean squared error of a linear model on (x, y) pairs."""

    def loss(self, model: nn.Module, batch: list) -> torch.Tensor:
        x = torch.stack([ex[0] for ex in batch])
        y = torch.stack([ex[1] for ex in batch])
        return (model(x) - y).pow(2).mean()


def test_chunked_gradient_accumulation_equals_one_batch() -> None:
    """mean_loss in chunks of 3, 3, 1 (what a `grad` probe runs) gives the whole batch's loss and gradient."""
    gen = torch.Generator().manual_seed(0)
    examples = [(torch.randn(3, generator=gen), torch.randn(1, generator=gen)) for _ in range(7)]
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    with torch.enable_grad():
        whole = SquaredError().loss(model, examples)
        whole.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        chunked = zo.runner.mean_loss(SquaredError(), model, examples, chunk=3, backward=True)
    assert chunked == pytest.approx(float(whole), abs=1e-6)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=0)


def allowed(value: object) -> bool:
    """What optimizer state may hold (checkpoints move to safetensors + JSON)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and allowed(v) for k, v in value.items())
    if isinstance(value, list):
        return all(isinstance(v, torch.Tensor) for v in value)
    return isinstance(value, torch.Tensor | int | float | str)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "adamw", "amsgrad": True, "weight_decay": 0.1, "fused": False},
        {"name": "sgd", "momentum": 0.9, "nesterov": True, "fused": False},
    ],
)
def test_state_round_trips_and_resumes_bitwise(cfg: dict, tmp_path) -> None:
    model = Linear(torch.tensor([[1.0, -2.0]]), torch.tensor([0.5, 3.0]))
    opt = build(model, cfg, seed=0)
    for t, g in enumerate(([[0.3, -4.0]], [[1.0, 0.25]]), start=1):
        step_with(opt, model, t, g, [2.0, -1.0], lr=0.01)
    state = opt.state_dict()
    assert allowed(state) and state["state"]
    torch.save(state, tmp_path / "opt.pt")
    twin = copy.deepcopy(model)
    resumed = build(twin, cfg, seed=0)
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for o, m in ((opt, model), (resumed, twin)):
        step_with(o, m, 3, [[-0.7, 2.0]], [0.1, 0.2], lr=0.01)
    assert torch.equal(model.W, twin.W) and torch.equal(model.b, twin.b)
    other = build(copy.deepcopy(model), {"name": "sgd" if cfg["name"] == "adamw" else "adamw"}, seed=0)
    with pytest.raises(ZOError, match="force=true"):
        other.load_state_dict(state)


def test_refusals_are_one_line() -> None:
    with pytest.raises(ZOError, match="use model.dtype=fp32$"):
        build(nn.Linear(2, 2).to(torch.bfloat16), {"name": "adamw"}, seed=0)
    model = Linear(torch.ones(1, 2), torch.ones(2))
    opt = build(model, {"name": "sgd", "fused": False}, seed=0)
    step_with(opt, model, 1, [[1.0, 1.0]], [1.0, 1.0], lr=0.1)
    with pytest.raises(ZOError, match="set log.align_every=0 or optimizer.momentum>0"):
        opt.reference_vector(0)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["optimizer=adamw", "optimizer.beta2=1.0"],
            "optimizer.beta2=1.0 is invalid: allowed 0 <= beta2 < 1",
        ),
        (["optimizer=adamw", "optimizer.delta=0"], "optimizer.delta=0 is invalid"),
        (["optimizer=adamw", "optimizer.amsgrad=3"], "optimizer.amsgrad=3 is invalid"),
        (
            ["optimizer=adamw", "+optimizer.momentum=0.9"],
            "optimizer.momentum is not a key of optimizer adamw",
        ),
        (["optimizer=sgd", "optimizer.momentum=1.0"], "optimizer.momentum=1.0 is invalid"),
        (["optimizer=sgd", "optimizer.nesterov=true"], "optimizer.nesterov=True is invalid"),
        (["optimizer=sgd", "optimizer.queries=2"], "optimizer.queries=2 is invalid"),
    ],
)
def test_bad_keys_are_one_line_config_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)
