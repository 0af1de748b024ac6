"""Sparse-MeZO and R-AdaZO against doc §8/§9's worked examples, on a real tiny model, and their state."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import zo.noise
from tests.conftest import QUAD, compose
from tests.test_kernels import tiny_llama
from tests.test_optim import Linear, zo_step
from tests.test_optim_fzoo import Weights
from zo import ZOError
from zo.checkpoint import flatten, unflatten
from zo.config import ConfigError, validate
from zo.fused import kernel
from zo.noise import mix
from zo.optim import build
from zo.optim.base import Probe
from zo.optim.mezo import mezo_step
from zo.optim.sparse_mezo import masked_block, masked_rows
from zo.optim.zo_adam import adam_step

IDS = torch.tensor([[5, 7, 5, 290, 0, 7, 11, 3]])


def inject(monkeypatch: pytest.MonkeyPatch, table: dict[int, list[float]]) -> None:
    """The noise of seed s is the vector table[s] (by flat index), in the forwards and the updates."""
    vectors = {s: torch.tensor(u) for s, u in table.items()}
    fake = lambda idx, s: vectors[s][idx]  # noqa: E731
    monkeypatch.setattr(zo.noise, "normal_at", fake)  # every kernel draws through zo.noise.noise_at


def z_seed(step: int, k: int, seed: int = 0) -> int:
    """Seed of z_k at `step` (`ZOOptimizer.noise_seed`: z_0 the step seed, the others MeZO's query seeds)."""
    return mix(seed, step) if k == 0 else mix(mix(seed, step), 0xD12EC7, k)


def close(actual: torch.Tensor, expected: list[float], atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.detach().double(), torch.tensor(expected).double(), rtol=0, atol=atol)


# ---- Sparse-MeZO ----------------------------------------------------------------------------------
def lm_loss(model: nn.Module) -> float:
    return float(model(input_ids=IDS, labels=IDS).loss)


def sparse(model: nn.Module, seed: int = 1, **keys):
    return build(model, {"name": "sparse_mezo", "eps": 1e-2, "fused": False, **keys}, seed=seed)


def masks(opt) -> list[torch.Tensor]:
    """[|W| ≤ h] of every tensor from its weights now (all ones for a dense tensor)."""
    return [
        p.detach().abs() <= (torch.inf if h is None else h)
        for p, h in zip(opt.params, opt.thresholds, strict=True)
    ]


@pytest.mark.parametrize(
    ("every", "expected"), [(0, [0.5, -0.12, 0.002, -2.0]), (1, [0.5, -0.108, 0.002, -2.0])]
)
def test_sparse_mezo_worked_example(monkeypatch: pytest.MonkeyPatch, every: int, expected: list) -> None:
    """Doc §8: d = 4, s = 0.5, ε = 0.01, η = 0.004; h fixed (0.1), or recomputed at step 2 (0.12)."""
    inject(monkeypatch, {z_seed(1, 0): [1.0, 1.0, 2.0, 0.5], z_seed(2, 0): [-0.5, 1.5, -1.0, 2.0]})
    model = Weights([0.5, -0.1, 0.05, -2.0])  # records the x each forward saw
    opt = sparse(model, seed=0, sparsity=0.5, eps=0.01, threshold_every=every)
    assert opt.thresholds == [pytest.approx(0.1, abs=1e-7)]
    losses = {1: {1.0: 1.2, -1.0: 1.1}, 2: {1.0: 1.0, -1.0: 1.04}}
    for t in (1, 2):
        with torch.no_grad():
            opt.step(t, lambda probe, t=t: (model(), losses[t][probe.scale])[1], 0.004, None)
        if t == 1:
            close(torch.tensor(model.seen), [[0.5, -0.09, 0.07, -2.0], [0.5, -0.11, 0.03, -2.0]])
            close(model.x, [0.5, -0.12, 0.01, -2.0])
            assert opt.projected_grad == pytest.approx(5.0)
    assert opt.projected_grad == pytest.approx(-2.0)
    assert opt.thresholds == [pytest.approx(0.1 if every == 0 else 0.12, abs=1e-7)]
    close(model.x, expected)


@pytest.mark.parametrize("layers", [4, 30])  # the tied head bigger than a block (chunked), or not
def test_sparse_forward_sees_the_mask_of_the_unperturbed_weights(layers: int) -> None:
    """Blocks, embedding rows and head chunks perturb exactly ε·[|W| ≤ h]⊙z, W the live weights; the
    perturbed weights would give another mask (so the check tells the two apart)."""
    model = tiny_llama(torch.float32, layers)
    opt = sparse(model, eps=0.05, weight_decay=0.1)
    with torch.no_grad():
        for t in (1, 2):
            opt.step(t, lambda probe: lm_loss(model), 1e-2, None)
        opt.begin_step(3)
        zs = [opt.direction(i) for i in range(len(opt.params))]
        clean = lm_loss(model)
        with opt.perturb(+1):
            hooked = lm_loss(model)
            inside = [opt.direction(i) for i in range(len(opt.params))]
        active = masks(opt)
        assert all(torch.equal(a, b) for a, b in zip(zs, inside, strict=True))
        assert all(torch.equal(z != 0, m) for z, m in zip(zs, active, strict=True))
        opt.close()
        for p, z in zip(opt.params, zs, strict=True):
            p.add_(opt.cfg.eps * z)
        manual = lm_loss(model)
        moved = masks(opt)
    assert abs(hooked - clean) > 1e-3
    assert hooked == pytest.approx(manual, rel=1e-6, abs=0.0)
    assert sum(int((a != b).sum()) for a, b in zip(active, moved, strict=True)) > 100


@pytest.mark.parametrize("every", [0, 2])
def test_masked_out_entries_never_move_and_only_active_ones_decay(every: int) -> None:
    model = tiny_llama(torch.float32, layers=2)
    opt = sparse(model, sparsity=0.8, weight_decay=0.5, threshold_every=every)
    for p, h in zip((p.detach() for p in opt.params), opt.thresholds, strict=True):
        k = max(1, int(0.2 * p.numel() + 1e-9))
        assert int((p.abs() <= h).sum()) >= k and float(p.abs().flatten().kthvalue(k).values) == h
    start = [p.detach().clone() for p in opt.params]
    frozen = [~m for m in masks(opt)]
    with torch.no_grad():
        for t in range(1, 6):
            opt.begin_step(t)  # a recomputed h is the step's (`step` begins it again, to the same h)
            active, before = masks(opt), [p.detach().clone() for p in opt.params]
            opt.step(t, lambda probe: lm_loss(model), 1e-2, None)
            for p, x, m in zip(opt.params, before, active, strict=True):
                changed = p != x
                assert not bool((changed & ~m).any())  # nothing outside the step's mask moves
                assert int(changed.sum()) >= 0.99 * int(m.sum())  # and (almost) all of it does
    if every == 0:  # h fixed: a frozen entry never comes back
        for p, x, f in zip(opt.params, start, frozen, strict=True):
            assert torch.equal(p[f], x[f])
    assert sum(int(f.sum()) for f in frozen) > 0.7 * opt.d


def test_sparsity_zero_is_mezo_bitwise() -> None:
    models = [tiny_llama(torch.float32, layers=2) for _ in range(2)]
    opts = [
        build(m, {"name": name, "eps": 1e-2, "weight_decay": 0.1, "fused": False, **keys}, seed=3)
        for m, (name, keys) in zip(models, [("mezo", {}), ("sparse_mezo", {"sparsity": 0.0})], strict=True)
    ]
    with torch.no_grad():
        losses = [[opt.step(t, lambda probe, m=m: lm_loss(m), 1e-2, None) for t in range(1, 5)]
                  for opt, m in zip(opts, models, strict=True)]  # fmt: skip
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(*(o.params for o in opts), strict=True))
    fresh = tiny_llama(torch.float32, 2).parameters()
    assert all(not torch.equal(a, b) for a, b in zip(opts[0].params, fresh, strict=True))


def test_scope_matrices_leaves_vectors_and_embeddings_dense() -> None:
    model = tiny_llama(torch.float32, layers=2)
    dense = {id(model.model.embed_tokens.weight)} | {id(p) for p in model.parameters() if p.ndim < 2}
    opt = sparse(model, scope="matrices")
    everything = sparse(tiny_llama(torch.float32, layers=2), scope="all")
    assert all(h is not None for h in everything.thresholds)
    opt.begin_step(1)
    for i, (p, h) in enumerate(zip(opt.params, opt.thresholds, strict=True)):
        zeros = float((opt.direction(i) == 0).float().mean())
        if id(p) in dense:
            assert h is None and zeros == 0.0
        else:  # no ties in random matrices: exactly k active
            assert h is not None and zeros == pytest.approx(0.8, abs=1.0 / p.numel())


def test_rademacher_noise_is_plus_minus_one_where_active() -> None:
    opt = sparse(tiny_llama(torch.float32, layers=2), noise="rademacher")
    opt.begin_step(1)
    for i, m in enumerate(masks(opt)):
        z = opt.direction(i)
        assert torch.equal(z.abs(), m.float())


def test_thresholds_survive_a_checkpoint_round_trip() -> None:
    """State through the checkpoint's JSON header: the resumed run keeps h (it would differ if
    recomputed from the moved weights) and lands bitwise where the uninterrupted one does."""

    def run(opt, model, steps) -> None:
        with torch.no_grad():
            for t in steps:
                opt.step(t, lambda probe: lm_loss(model), 1e-2, None)

    whole = tiny_llama(torch.float32, layers=2)
    run(sparse(whole, sparsity=0.5), whole, range(1, 7))
    half = tiny_llama(torch.float32, layers=2)
    first = sparse(half, sparsity=0.5)
    run(first, half, range(1, 4))
    tensors: dict = {}
    header = json.loads(json.dumps(flatten(first.state_dict(), "optimizer", tensors)))
    resumed = tiny_llama(torch.float32, layers=2)
    with torch.no_grad():
        for p, x in zip(resumed.parameters(), half.parameters(), strict=True):
            p.copy_(x)
    second = sparse(resumed, sparsity=0.5)
    assert second.thresholds != first.thresholds  # from the moved weights
    second.load_state_dict(unflatten(header, tensors))
    assert second.thresholds == first.thresholds
    run(second, resumed, range(4, 7))
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), whole.parameters(), strict=True))
    with pytest.raises(ZOError, match="use the same optimizer.sparsity and optimizer.scope") as err:
        sparse(tiny_llama(torch.float32, layers=2), sparsity=0.7).load_state_dict(first.state_dict())
    assert "\n" not in str(err.value)


# ---- R-AdaZO ----------------------------------------------------------------------------------------
STEPS = [  # doc §9: (z_1, z_2), f_0, (f_1, f_2) of steps 1 and 2
    (([1.0, -0.5, 0.2, 2.0], [-1.0, 0.3, 1.5, 0.0]), 2.0, (2.03, 1.99)),
    (([0.5, 1.0, -1.0, 0.0], [2.0, -1.0, 0.5, 1.0]), 1.5, (1.52, 1.49)),
]
X0 = [0.5, -0.3, 0.2, 1.0]


def reference(mode: str = "", lr: float = 0.01, eps: float = 0.01, zeta: float = 1e-8) -> list[float]:
    """Doc §9's rule per coordinate in plain Python (β = 0.9, 0.999). mode: "" the rule; "inside" ζ
    in the root; "v" our bias correction (v/(1−β₂ᵗ)); "adam" Adam's (m/(1−β₁ᵗ) too); "g2" v fed ĝ²."""
    out = []
    for i, x in enumerate(X0):
        m = v = 0.0
        for t, ((z1, z2), f0, (f1, f2)) in enumerate(STEPS, start=1):
            g = ((f1 - f0) / eps * z1[i] + (f2 - f0) / eps * z2[i]) / 2
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * (g * g if mode == "g2" else m * m)
            mh = m / (1 - 0.9**t) if mode == "adam" else m
            vh = v / (1 - 0.999**t) if mode in ("v", "adam") else v
            x -= lr * mh / ((vh + zeta) ** 0.5 if mode == "inside" else vh**0.5 + zeta)
        out.append(x)
    return out


def test_doc_numbers_are_the_rule_and_its_variants() -> None:
    """The reference reproduces every x the doc gives: its "bias correction" is Adam's, on m and v."""
    assert reference() == pytest.approx([0.011372, -0.176236, 0.821384, 0.496706], abs=1e-6)
    assert reference("inside") == pytest.approx([0.011426, -0.176356, 0.820557, 0.496730], abs=1e-6)
    assert reference("adam") == pytest.approx([0.359431, -0.245290, 0.371809, 0.855980], abs=1e-6)
    assert reference("g2") == pytest.approx([0.448427, -0.280852, 0.271019, 0.945492], abs=1e-6)


def radazo(monkeypatch: pytest.MonkeyPatch, steps: int, **keys):
    """R-AdaZO on the doc's example, replayed from its losses with its z."""
    inject(monkeypatch, {z_seed(t, k): z for t, (zs, _, _) in enumerate(STEPS, 1) for k, z in enumerate(zs)})
    model = Linear(torch.zeros(4))
    model.x.data = torch.tensor(X0)
    opt = build(model, {"name": "r_adazo", "eps": 0.01, "fused": False, **keys}, seed=0)
    for t, (_, f0, fs) in enumerate(STEPS[:steps], start=1):
        opt.replay(t, [f0, *fs], 0.01, None)
    return model, opt


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({}, [0.011372, -0.176236, 0.821384, 0.496706]),
        ({"zeta_inside": True}, [0.011426, -0.176356, 0.820557, 0.496730]),
        ({"bias_correction": True}, [0.482292, -0.298605, 0.223644, 0.981636]),  # = reference("v")
    ],
)
def test_r_adazo_worked_example(monkeypatch: pytest.MonkeyPatch, keys: dict, expected: list) -> None:
    model, opt = radazo(monkeypatch, 1, **keys)
    close(opt.momentum[0], [0.2, -0.09, -0.045, 0.3])
    close(opt.second[0], [4e-5, 8.1e-6, 2.025e-6, 9e-5], atol=1e-11)
    assert opt.estimates == pytest.approx([3.0, -1.0]) and opt.projected_grad == pytest.approx(1.0)
    if not keys:
        close(model.x, [0.183773, 0.016227, 0.516226, 0.683773])
    model, opt = radazo(monkeypatch, 2, **keys)
    close(opt.momentum[0], [0.13, 0.069, -0.1655, 0.22])
    close(opt.second[0], [5.686e-5, 1.28529e-5, 2.9413225e-5, 1.3831e-4], atol=1e-10)
    close(model.x, expected)
    mode = {"zeta_inside": "inside", "bias_correction": "v"}.get(next(iter(keys), ""), "")
    close(model.x, reference(mode))
    assert opt.steps == 2 and opt.peak == []


def test_r_adazo_takes_k_plus_one_probes_and_logs_f0() -> None:
    model = Linear(torch.linspace(-1.0, 1.0, 8))
    opt = build(model, {"name": "r_adazo", "queries": 3, "eps": 1e-2, "fused": False}, seed=0)
    seen: list[Probe] = []
    with torch.no_grad():
        losses = opt.step(1, lambda probe: seen.append(probe) or model().item(), 1e-3, None)
    assert [(p.scale, p.k) for p in seen] == [(0.0, 0), (1.0, 0), (1.0, 1), (1.0, 2)]
    assert len(losses) == 4 and opt.logged_loss(losses) == losses[0] == 0.0


def test_r_adazo_first_corrected_step_is_lr_times_sign() -> None:
    """bias_correction: m = (1−β₁)ĝ, v/(1−β₂) = m², so x moves by η·sign(ĝ) in every coordinate (ζ → 0)."""
    model = Linear(torch.linspace(-1.0, 2.0, 20))  # x = 0: the step is not rounded into a larger x
    keys = {"name": "r_adazo", "bias_correction": True, "zeta": 1e-30, "eps": 1e-2, "fused": False}
    opt = build(model, keys, seed=5)
    zo_step(opt, model, 1, lr=1e-3, beta=None)
    g = torch.zeros(20)
    for k, p in enumerate(opt.estimates):
        opt.probe = Probe(1.0, k)
        g += p * opt.direction(0) / len(opt.estimates)
    torch.testing.assert_close(model.x.detach(), -1e-3 * torch.sign(g), rtol=1e-6, atol=0)
    assert bool((g != 0).all())


# ---- config, fused kernels ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optimizer=sparse_mezo", "optimizer.sparsity=1"], "sparsity=1 is invalid: allowed 0 <= sparsity"),
        (["optimizer=sparse_mezo", "optimizer.scope=rows"], "scope=rows is invalid: allowed one of all"),
        (["optimizer=sparse_mezo", "optimizer.threshold_every=-1"], "threshold_every=-1 is invalid"),
        (["optimizer=r_adazo", "optimizer.zeta=0"], "optimizer.zeta=0 is invalid: allowed zeta > 0"),
    ],
)  # fmt: skip
def test_bad_keys_are_one_line_config_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose([*QUAD, *overrides]))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_fused_kernels_follow_eager() -> None:
    """The compiled masked perturbation (block and rows), masked update and R-AdaZO's Adam form."""
    gen = torch.Generator().manual_seed(0)
    x, m, v = torch.randn(3, 2000, generator=gen).unbind()
    rows, ids = torch.randn(5, 40, generator=gen), torch.tensor([[3, 0, 3]])
    outs = []
    for fused in (False, True):
        a, mm, vv = x.clone(), m.clone(), v.abs().clone()
        block = kernel(masked_block, fused)(a, a, 10, 7, "gaussian", 0.5, 0.6)
        picked = kernel(masked_rows, fused)(rows[ids], ids, 10, 7, "rademacher", 0.5, 0.6)
        kernel(mezo_step, fused)(a, 10, 7, "gaussian", 8, 0.9, 0.1, True, ((9, -0.2),), 0.6)
        hyper = (0.9, 0.999, 1.0, 1 - 0.999**2, 1e-8)
        b = x.clone()
        kernel(adam_step, fused)(
            b,
            (mm, vv, None),
            10,
            (11, "gaussian", 0.7, ()),
            (1, 2, 3, 4),
            0.0,
            1e-2,
            hyper,
            True,
            (True, True),
        )
        outs.append((block, picked, a, b, mm, vv))  # fmt: skip
    for eager, compiled in zip(*outs, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    eager_block, _, moved = outs[0][:3]
    assert 0 < int((eager_block == x).sum()) < 2000 and torch.equal(moved[x.abs() > 0.6], x[x.abs() > 0.6])
