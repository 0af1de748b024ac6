"""The pieces under the optimizers: counter-based noise, rounding, flat layout, fused kernels."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch import nn

from zo import ZOError, noise
from zo.flat import FlatParams
from zo.fused import kernel
from zo.noise import normal_at, normal_v1_at, positions, uniform_at
from zo.optim import build
from zo.optim.base import OptimConfig
from zo.rounding import _FORMATS, _gap

CPU = torch.device("cpu")


@pytest.mark.parametrize("draw", [normal_at, normal_v1_at], ids=["v2", "v1"])
def test_noise_is_standard_normal(draw) -> None:
    """Moments, tails and the whole CDF of 10⁶ draws, at ~5σ of each statistic's sampling spread (one
    fixed seed: the test is deterministic, and a real departure from N(0, 1) is far larger)."""
    n = 1_000_000
    z = draw(positions(0, n, CPU), seed=42).double()
    assert abs(float(z.mean())) < 0.005  # σ of the mean: 1/√n = 0.001
    assert float(z.var()) == pytest.approx(1.0, abs=0.007)  # σ of the variance: √(2/n) = 0.0014
    assert float((z**4).mean()) == pytest.approx(3.0, abs=0.05)  # σ: √((105 − 9)/n) = 0.0098
    assert float((z.abs() > 3).double().mean()) == pytest.approx(0.0027, abs=0.0004)  # σ: 5·10⁻⁵
    # Kolmogorov–Smirnov: P(√n·D > 1.95) = 0.001 under N(0, 1).
    cdf = torch.special.ndtr(z.sort().values)
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    ks = max(float((steps[1:] - cdf).max()), float((cdf - steps[:-1]).max()))
    assert ks < 1.95 / math.sqrt(n)
    # Neighbours are independent, the pairs (2j, 2j+1) that one hash would feed in a paired Box–Muller
    # included: their correlation and that of their squares, σ 1/√(n/2) = 0.0014 (squares: the same).
    even, odd = z[0::2], z[1::2]
    assert abs(float((even * odd).mean())) < 0.007
    assert abs(float(((even**2 - 1) * (odd**2 - 1)).mean()) / 2) < 0.007
    assert abs(float((z[:-1] * z[1:]).mean())) < 0.005
    other = draw(positions(0, n, CPU), seed=43).double()
    assert abs(float((z * other).mean())) < 0.005  # another seed is another stream


def test_draw_version_2_is_box_muller_to_a_few_ulp() -> None:
    """Version 2 computes √(−2 ln u1)·(±cos(π/2·v)) with its own series for ln and cos: against the
    same formula in float64 on the same hash bits, every one of 10⁶ draws is within 10⁻⁶ (~2 ulp at
    |z| = 4), and the series over every one of the 2²⁴ inputs each can get are within 2 ulp."""
    idx = positions(0, 1_000_000, CPU)
    bits = noise._hash(idx, 42)
    u1 = (noise._shr(bits, 40).double() * 2.0**-24 + 2.0**-25).float().double()  # u1 as fp32 holds it
    sign = 1.0 - 2.0 * ((bits >> 24) & 1).double()
    v = (bits & 0xFFFFFF).double() * 2.0**-24
    exact = sign * torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(math.pi / 2 * v)
    assert float((normal_at(idx, 42).double() - exact).abs().max()) < 1e-6
    grid = torch.arange(1 << 24, dtype=torch.int32).float() * 2.0**-24  # every v, and every u1 − 2⁻²⁵
    u = (grid + 2.0**-25).double()
    ln = noise._log_unit(grid + 2.0**-25).double()
    assert float(((ln - u.log()).abs() / u.log().abs().clamp_min(1e-30)).max()) < 2 * 2.0**-23
    assert float((noise._cos_quarter(grid).double() - (math.pi / 2 * grid.double()).cos()).abs().max()) < 2e-7


@pytest.mark.parametrize("draw", [normal_at, normal_v1_at], ids=["v2", "v1"])
def test_noise_slices_are_slices_of_one_stream(draw) -> None:
    """Any stretch of the flat vector regenerates on its own: what per-block perturbation relies on.
    Compiled (one C++ loop), the draw agrees with the eager one within float rounding, and a slice of
    it with the slice of the whole."""
    whole = draw(positions(0, 10_000, CPU), seed=7)
    assert torch.equal(draw(positions(1234, 500, CPU), seed=7), whole[1234:1734])
    assert torch.equal(draw(positions(4321, 333, CPU), seed=7), whole[4321:4654])  # odd start and length
    fused = kernel(draw, fused=True)
    compiled = fused(positions(0, 10_000, CPU), 7)
    torch.testing.assert_close(compiled, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused(positions(4321, 333, CPU), 7), compiled[4321:4654], rtol=0, atol=1e-6)
    u = uniform_at(positions(0, 100_000, CPU), seed=7)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert float(u.double().mean()) == pytest.approx(0.5, abs=0.005)


def test_eager_draws_in_pieces_give_the_whole_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Op by op, draws go in pieces to bound their int64 temporaries; the numbers must not change."""
    idx = positions(987, 1000, CPU).view(10, 100)
    whole = normal_at(idx, 7), uniform_at(idx, 7)
    monkeypatch.setattr(noise, "EAGER_PIECE", 64)  # 1000 = 15 pieces of 64 and one of 40
    assert torch.equal(normal_at(idx, 7), whole[0]) and torch.equal(uniform_at(idx, 7), whole[1])
    assert normal_at(idx, 7).shape == (10, 100)


def all_finite(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return values[torch.isfinite(values)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rounding_gap_is_the_distance_to_the_next_value_for_every_value(dtype: torch.dtype) -> None:
    """Checked against torch.nextafter on all 65k bit patterns, in both directions."""
    y = all_finite(dtype)
    mantissa, tiny = _FORMATS[dtype]
    for direction in (math.inf, -math.inf):
        neighbour = torch.nextafter(y, torch.full_like(y, direction))
        keep = torch.isfinite(neighbour)
        expected = (neighbour.float() - y.float()).abs()[keep]
        y32 = y.float()[keep]
        toward_zero = (y32 > 0) if direction < 0 else (y32 < 0)
        assert torch.equal(_gap(y32, toward_zero, mantissa, tiny), expected)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)) for _ in range(30)])
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight
        self.ids = torch.arange(40)

    def forward(self) -> torch.Tensor:
        return self.head(self.body(self.emb(self.ids))).logsumexp(-1).mean()


def test_flat_layout_rehomes_parameters_without_changing_the_model() -> None:
    torch.manual_seed(0)
    model = Tied()
    before = model().item()
    opt = build(model, OptimConfig(name="mezo", fused=False), seed=0)
    assert model().item() == before
    buffers = opt.flat.buffers
    assert 2 <= len(buffers) <= 9 and sum(b.data.numel() for b in buffers) == opt.d
    for s in opt.flat.segments:  # every parameter is a view of its slice
        data = buffers[s.group].data
        assert s.param.data_ptr() == data[s.start :].data_ptr()
    assert [b.offset for b in buffers] == [
        sum(x.data.numel() for x in buffers[:i]) for i in range(len(buffers))
    ]
    with torch.no_grad():
        model.emb.weight[0, 0] = 5.0  # writes through the view
    assert float(buffers[0].data[0]) == 5.0
    assert FlatParams([nn.Parameter(torch.ones(3))]).d == 3


def test_a_transformer_layer_is_perturbed_as_one_block() -> None:
    model = tiny_llama(torch.float32, layers=30)  # as deep as SmolLM2: a layer is ~3% of the weights
    opt = build(model, OptimConfig(name="mezo", fused=False), seed=0)
    calls: list[int] = []
    original = opt._perturbed
    opt._perturbed = lambda run: calls.append(run.end - run.start) or original(run)
    opt.begin_step(1)
    with torch.no_grad(), opt.perturb(+1):
        model(input_ids=torch.arange(8)[None])
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert calls.count(layer) == len(model.model.layers)  # one kernel per layer, not per tensor
    assert sum(calls) == opt.d  # and the tied embedding/head only once
    assert len(calls) < len(opt.params) / 3


def tiny_llama(dtype: torch.dtype, layers: int = 4) -> nn.Module:
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).to(dtype)


@pytest.mark.parametrize("layers", [4, 30])  # the tied head bigger than a block (chunked), or not
@pytest.mark.parametrize("name", ["mezo", "conmezo"])
def test_the_forward_sees_exactly_x_plus_lambda_z(name: str, layers: int) -> None:
    """Blocks, embedding rows and head chunks together perturb every weight by λz, no more, no less."""
    model = tiny_llama(torch.float32, layers)
    cfg = OptimConfig(name=name, lr=1e-2, eps=1e-2, fused=False)
    opt = build(model, cfg, seed=1)
    ids = torch.tensor([[5, 7, 5, 290, 0, 7]])
    with torch.no_grad():
        for t in range(1, 4):  # a momentum that is no longer pure noise
            opt.step(t, lambda probe: float(model(input_ids=ids, labels=ids).loss), cfg.lr, 0.9)
        opt.begin_step(4)
        clean = float(model(input_ids=ids, labels=ids).loss)
        with opt.perturb(+1):
            hooked = float(model(input_ids=ids, labels=ids).loss)
        opt.close()  # no hooks: perturb the weights by hand
        for i, p in enumerate(opt.params):
            p.add_(cfg.eps * opt.direction(i))
        manual = float(model(input_ids=ids, labels=ids).loss)
    assert abs(hooked - clean) > 1e-3
    assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0)


def run_steps(name: str, dtype: torch.dtype, fused: bool, steps: int = 6) -> tuple[list[float], nn.Module]:
    model = tiny_llama(dtype)
    cfg = OptimConfig(name=name, lr=1e-2, eps=1e-2, theta=1.3, weight_decay=0.1, fused=fused)
    opt = build(model, cfg, seed=3)
    ids = torch.arange(2, 66).view(2, 32)
    losses = []
    with torch.no_grad():
        for t in range(1, steps + 1):
            opt.step(t, lambda probe: float(model(input_ids=ids, labels=ids).loss), cfg.lr, 0.9)
            losses.append(opt.projected_grad)
    return losses, model


@pytest.mark.parametrize("name", ["mezo", "mezo_momentum", "conmezo"])
def test_fused_kernels_follow_the_eager_trajectory_in_fp32(name: str) -> None:
    """The compiled path (C++ here, Triton on CUDA) against the same math run op by op."""
    eager_p, eager = run_steps(name, torch.float32, fused=False)
    fused_p, fused = run_steps(name, torch.float32, fused=True)
    assert eager_p != [0.0] * len(eager_p)
    assert fused_p == pytest.approx(eager_p, rel=1e-3, abs=1e-3)
    for a, b in zip(eager.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # weights ~0.02, steps ~1e-2


@pytest.mark.parametrize("name", ["mezo", "mezo_momentum", "conmezo"])
def test_fused_kernels_match_eager_on_bf16_weights(name: str) -> None:
    """Same inputs, one perturbation and one update: bf16 results agree but for rare near-ties.

    (Whole trajectories in bf16 drift apart: the loss difference amplifies any one-ulp change.)
    """
    results = []
    for fused in (False, True):
        model = tiny_llama(torch.bfloat16)
        cfg = OptimConfig(name=name, lr=1e-3, eps=1e-2, momentum_dtype="bf16", fused=fused)
        opt = build(model, cfg, seed=3)
        opt.begin_step(1)
        opt._scale = cfg.eps
        perturbed = torch.cat(
            [opt._perturbed(r) for r in opt.flat.runs(opt.flat.segments, lambda a, b: False)]
        )
        opt._scale = 0.0
        opt.projected_grad = 2.5
        opt.update(cfg.lr, 0.9)
        state = [perturbed, torch.cat([p.detach().flatten() for p in model.parameters()])]
        results.append(state + ([torch.cat(opt.momentum)] if opt.momentum else []))
    for eager, fused in zip(*results, strict=True):
        differ = eager != fused
        assert float(differ.float().mean()) < 0.002
        ulps = (eager.view(torch.int16).int() - fused.view(torch.int16).int()).abs()  # same sign: ulp count
        # Where x and λz nearly cancel, a result far below both differs by their fp32 rounding (~10⁻⁹ at
        # weights ~0.02), many of its own bf16 ulps: those are held to that absolute difference.
        cancelled = (eager.float() - fused.float()).abs() <= 2.0**-26
        assert int(ulps.masked_fill(cancelled, 0).max()) <= 2  # each rounds to a neighbour of ~one value


def test_a_missing_compiler_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from zo import fused

    def broken(fn, **_):
        def call(*args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(fn, RuntimeError("cc1plus: not found"), None)

        return call

    fused._compiled.cache_clear()
    monkeypatch.setattr(torch, "compile", broken)
    model = Tied()
    with pytest.raises(ZOError, match=r"fused=false"):
        opt = build(model, OptimConfig(name="mezo"), seed=0)
        opt.begin_step(1)
        with torch.no_grad(), opt.perturb(+1):
            model()
    fused._compiled.cache_clear()
