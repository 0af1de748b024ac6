"""LOZO / LOZO-M against the doc's worked examples (§3), the hooks, exact restore, V's timing, resume."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from tests.conftest import compose
from tests.test_kernels import tiny_llama
from tests.test_optim import TwoLayer, probe_and_update
from zo.config import ConfigError, validate
from zo.noise import normal_at, positions
from zo.optim import build


class HalfSquare(nn.Module):
    """f(W) = ½‖W‖²_F at W = I₂, the doc's example."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.eye(2))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.w**2).sum()


def lozo(model: nn.Module, **keys):
    return build(model, {"name": "lozo", "fused": False, **keys}, seed=0)


def step(opt, model: nn.Module, t: int, lr: float) -> None:
    with torch.no_grad():
        opt.step(t, lambda probe: float(model()), lr, None)


def inject(opt, u: list[float], v: list[float] | None = None) -> None:
    """The doc's U (and V, as if drawn for the next redraw) in place of the seeded ones."""
    U = torch.tensor(u).view(-1, 1)
    opt.u_rows = lambda k, rows: U[rows]
    if v is not None:
        opt.draw_v = lambda k, s: torch.tensor(v).view(-1, 1)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_doc_example_first_step(momentum: float) -> None:
    """W = I₂, r = 1, U = (1, 2)ᵀ, V = (1, −1)ᵀ, ε = η = 0.1: c = −1, W = [[1.1, −0.1], [0.2, 0.8]]."""
    model = HalfSquare()
    opt = lozo(model, rank=1, eps=0.1, lr=0.1, momentum=momentum)
    inject(opt, [1.0, 2.0])
    opt.V[0].copy_(torch.tensor([[1.0], [-1.0]]))
    step(opt, model, 1, 0.1)
    assert opt.projected_grad == pytest.approx(-1.0, abs=1e-6)
    torch.testing.assert_close(model.w.data, torch.tensor([[1.1, -0.1], [0.2, 0.8]]), rtol=0, atol=1e-6)
    if momentum:
        torch.testing.assert_close(opt.N[0], torch.tensor([[-1.0], [-2.0]]), rtol=0, atol=1e-6)


def test_doc_example_lozo_m_transition() -> None:
    """From the first step's state, V_old = (1, −1)ᵀ, V_new = (1, 0)ᵀ, U = (1, 0)ᵀ, β = 0.9:
    c = 1.1, N = (−0.34, −0.9)ᵀ, W = [[1.134, −0.1], [0.29, 0.8]]."""
    model = HalfSquare()
    opt = lozo(model, rank=1, eps=0.1, lr=0.1, momentum=0.9, interval=2)
    inject(opt, [1.0, 2.0])
    opt.V[0].copy_(torch.tensor([[1.0], [-1.0]]))
    step(opt, model, 1, 0.1)
    opt.V_old[0].copy_(torch.tensor([[1.0], [-1.0]]))  # what step t = 2 (s = ν − 1) would store
    opt.has_old = True
    inject(opt, [1.0, 0.0], v=[1.0, 0.0])
    step(opt, model, 3, 0.1)  # s = 2: V is redrawn, N carried into its basis
    assert opt.projected_grad == pytest.approx(1.1, abs=1e-6)
    torch.testing.assert_close(opt.N[0], torch.tensor([[-0.34], [-0.9]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.w.data, torch.tensor([[1.134, -0.1], [0.29, 0.8]]), rtol=0, atol=1e-6)


def test_lozo_m_at_interval_1_keeps_no_matrix_momentum() -> None:
    """ν = 1: the reference redraws V every step and never stores V_old, so every step sets N = cU
    (doc §3): after the doc's first step (c₁ = −1, N = (−1, −2)ᵀ), step 2 with U₂ = (1, 0)ᵀ,
    V₂ = (1, 0)ᵀ at W₁ = [[1.1, −0.1], [0.2, 0.8]] has c₂ = W₁ ⊙ U₂V₂ᵀ summed = 1.1 and N = c₂U₂ =
    (1.1, 0)ᵀ (decaying it, 0.9 N₁ + 0.1 c₂U₂, would give (−0.79, −1.8)ᵀ); W₂ = W₁ − 0.1 N V₂ᵀ."""
    model = HalfSquare()
    opt = lozo(model, rank=1, eps=0.1, lr=0.1, momentum=0.9, interval=1)
    inject(opt, [1.0, 2.0])
    opt.V[0].copy_(torch.tensor([[1.0], [-1.0]]))
    step(opt, model, 1, 0.1)
    torch.testing.assert_close(opt.N[0], torch.tensor([[-1.0], [-2.0]]), rtol=0, atol=1e-6)
    inject(opt, [1.0, 0.0], v=[1.0, 0.0])
    step(opt, model, 2, 0.1)
    assert not opt.has_old
    assert opt.projected_grad == pytest.approx(1.1, abs=1e-6)
    torch.testing.assert_close(opt.N[0], torch.tensor([[1.1], [0.0]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.w.data, torch.tensor([[0.99, -0.1], [0.2, 0.8]]), rtol=0, atol=1e-6)


def test_lozo_m_at_interval_1_vectors_keep_their_momentum() -> None:
    """ν = 1 drops only the matrices' momentum: the vectors' m is still β m + (1−β) c z."""
    model = TwoLayer(torch.float32)
    opt = lozo(model, momentum=0.5, interval=1)
    ms = []
    for t in (1, 2):
        opt.begin_step(t)
        c = opt.estimate([0.3, 0.1] if t == 1 else [0.1, 0.4])
        previous = opt.vector_m[0].clone()
        opt.update(0.0, None)
        run = opt.vector_runs[0]
        z = normal_at(positions(opt.flat.slice(run)[1], previous.numel(), previous.device), opt.step_seed)
        ms.append((previous, c, z))
    (_, c1, z1), (m1, c2, z2) = ms
    torch.testing.assert_close(m1, c1 * z1)
    torch.testing.assert_close(opt.vector_m[0], 0.5 * m1 + 0.5 * c2 * z2)


@pytest.mark.parametrize("layers", [4, 30])  # 4: the tied head and MLP matrices run in chunks; 30: none
def test_the_forward_sees_exactly_w_plus_eps_u_vt(layers: int) -> None:
    """Blocks, embedding rows and head chunks: each matrix at W + ε·U Vᵀ, each vector at x + ε z."""
    model = tiny_llama(torch.float32, layers)
    opt = lozo(model, lr=1e-2, eps=1e-2, momentum=0.9, interval=2)
    ids = torch.tensor([[5, 7, 5, 290, 0, 7]])
    loss = lambda: float(model(input_ids=ids, labels=ids).loss)  # noqa: E731
    with torch.no_grad():
        for t in range(1, 4):  # V redrawn once, N carried
            opt.step(t, lambda probe: loss(), 1e-2, None)
        opt.begin_step(4)
        clean = loss()
        with opt.perturb(+1):
            hooked = loss()
        opt.close()  # no hooks: perturb the weights by hand
        for p in opt.params:
            seg = opt.flat.index[id(p)]
            start = opt.flat.buffers[seg.group].offset + seg.start
            if p.ndim >= 2:
                k = opt._matrix_of[id(p)]
                u = opt.u_rows(k, torch.arange(p.shape[0]))
                z = u @ opt.V[k].T
                assert torch.linalg.matrix_rank(z) == 2
            else:
                z = normal_at(positions(start, p.numel(), p.device), opt.step_seed)
            p.add_(1e-2 * z.view(p.shape))
        manual = loss()
    assert abs(hooked - clean) > 1e-3
    assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0)


def test_perturbation_restores_bf16_weights_bitwise_and_updates_move_them() -> None:
    model = TwoLayer(torch.bfloat16)  # tied embedding/head, norm, bias
    opt = lozo(model, eps=1e-2, momentum=0.9, interval=3, weight_decay=0.1)
    start = [p.detach().clone() for p in model.parameters()]
    for t in range(1, 9):
        probe_and_update(opt, model, t, beta=None)
    assert all(not torch.equal(a, p) for a, p in zip(start, model.parameters(), strict=True))


@pytest.mark.parametrize("interval", [1, 3])
def test_v_is_redrawn_every_interval_and_v_old_kept_before(interval: int) -> None:
    """Runner step t is the reference's s = t − 1: V redrawn at s % ν == 0, V_old ← V at s % ν == ν − 1
    (never with ν = 1), and N carried into the new basis exactly on the redraw steps that have a V_old."""
    model = TwoLayer(torch.float32)
    opt = lozo(model, momentum=0.5, interval=interval, rank=3)
    width = model.emb.weight.shape[1]
    for t in range(1, 9):
        s, previous_v, previous_n = t - 1, opt.V[0].clone(), opt.N[0].clone()
        opt.begin_step(t)
        assert torch.equal(opt.V[0], opt.draw_v(0, s - s % interval))
        assert torch.equal(opt.V[0], previous_v) == (s % interval != 0 or s == 0)
        had_old = opt.has_old
        with torch.no_grad():
            for probe in opt.probes():
                with opt.perturb(probe):
                    model()
        c = opt.estimate([0.3, 0.1])
        opt.update(0.0, None)
        u = opt.u_rows(0, torch.arange(model.emb.weight.shape[0]))
        carried = s % interval == 0 and had_old
        assert carried == (interval > 1 and s > 0 and s % interval == 0)
        n = previous_n @ (opt.V_old[0].T @ opt.V[0]) / width if carried else previous_n
        beta = 0.5 if s > 0 and interval > 1 else 0.0  # a redraw with no V_old (all of ν = 1): N = cU
        torch.testing.assert_close(opt.N[0], beta * n + (1 - beta) * c * u)
        stored = interval > 1 and s % interval == interval - 1
        assert opt.has_old == (interval > 1 and s >= interval - 1)
        if stored:
            assert torch.equal(opt.V_old[0], opt.V[0])


def test_lozo_m_reference_vector_is_the_step_it_took() -> None:
    """The logged alignment of LOZO-M is that of its momentum: N Vᵀ for matrices, m for vectors."""
    model = TwoLayer(torch.float32)
    opt = lozo(model, momentum=0.9, interval=2)
    for t in range(1, 4):
        before = [p.detach().clone() for p in opt.params]
        step(opt, model, t, 1e-2)
        for i, (b, p) in enumerate(zip(before, opt.params, strict=True)):
            torch.testing.assert_close(p.detach() - b, -1e-2 * opt.reference_vector(i), rtol=1e-4, atol=1e-7)


def test_state_dict_resumes_lozo_m_exactly() -> None:
    def run(steps: range, state: bytes | None = None) -> tuple[nn.Module, bytes]:
        model = TwoLayer(torch.float32)
        opt = lozo(model, momentum=0.9, interval=2, weight_decay=0.1)
        if state is not None:
            saved = torch.load(io.BytesIO(state), weights_only=False)
            with torch.no_grad():
                for p, value in zip(model.parameters(), saved["params"], strict=True):
                    p.copy_(value)
            opt.load_state_dict(saved["optimizer"])
        for t in steps:
            step(opt, model, t, 1e-2)
        out = io.BytesIO()
        torch.save({"params": list(model.parameters()), "optimizer": opt.state_dict()}, out)
        return model, out.getvalue()

    whole, _ = run(range(1, 8))
    _, half = run(range(1, 4))
    resumed, _ = run(range(4, 8), half)
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.rank=0", "optimizer.rank=0 is invalid: allowed rank >= 1"),
        ("optimizer.interval=0", "optimizer.interval=0 is invalid: allowed interval >= 1"),
        ("optimizer.momentum=1.0", "optimizer.momentum=1.0 is invalid: allowed 0 <= momentum < 1"),
        ("optimizer.momentum=-0.1", "optimizer.momentum=-0.1 is invalid: allowed 0 <= momentum < 1"),
    ],
)
def test_bad_keys_are_one_line_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose(["optimizer=lozo", override]))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_fused_update_matches_eager_in_bf16() -> None:
    """The compiled rounding pass (optimizer.fused) against the same math op by op: one LOZO-M step."""
    results = []
    for fused in (False, True):
        model = TwoLayer(torch.bfloat16)
        opt = build(model, {"name": "lozo", "fused": fused, "momentum": 0.9, "eps": 1e-2}, seed=0)
        step(opt, model, 1, 1e-2)
        results.append([p.detach().float() for p in model.parameters()])
    for eager, fused in zip(*results, strict=True):
        assert (eager != fused).float().mean() < 0.02  # bf16: equal but for rare near-ties
        torch.testing.assert_close(eager, fused, rtol=1e-2, atol=1e-2)
