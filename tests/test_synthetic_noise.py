"""bench/synthetic.py --protocol noise: the minibatch quadratic (zo.quadratic.NoisyQuadratics) and the
grid that runs it. Eager kernels throughout (bench.synthetic.FUSED = False, fused=False): no compile.

Tolerances. NoisyQuadratics builds n_b ⟂ ∇F with ‖n_b‖² = (1/ρ² − 1)‖∇F‖², so cos²(∇f_b, ∇F) = ρ²
holds exactly in real arithmetic, at every step and for every draw. What is left is fp32 rounding
in the draw: sums of d = 300 products, each rounded to 2⁻²⁴ relative, whose error grows at most like
d·2⁻²⁴ ≈ 2e-5 (typically √d·2⁻²⁴ ≈ 1e-6), and the removed component, ⟨v, g⟩/‖g‖², leaves a residue
of the same relative size along g. So the measured cos² must match ρ² to rel 1e-4, a test that a
statistical construction (n_b isotropic, cos² ≈ ρ² only for d → ∞: off by ~(1/ρ² − 1)/d relative,
30% at ρ² = 0.01 and d = 300) would fail.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import pytest
import torch

import bench.synthetic as synthetic
from zo.optim import build
from zo.optim.base import OptimConfig
from zo.quadratic import NoisyQuadratics, spectrum, start_point

D = 300
SIGMA = spectrum(D, D)
RHO2 = [1.0, 0.3, 0.03, 0.01]


@pytest.fixture(autouse=True)
def eager(monkeypatch) -> None:
    monkeypatch.setattr(synthetic, "FUSED", False)


def model_of(rho2: list[float], seed: int = 7) -> NoisyQuadratics:
    x0 = torch.stack([start_point(D, 10.0, k) for k in range(len(rho2))])
    return NoisyQuadratics(x0, SIGMA, 1.0, torch.tensor(rho2), seed, fused=False)


def gradients(model: NoisyQuadratics) -> tuple[torch.Tensor, torch.Tensor]:
    """∇F and ∇f_b at the current X by autograd through the model's two forwards, float64."""
    with torch.enable_grad():
        full = torch.autograd.grad(model().sum(), model.x)[0]
        batch = torch.autograd.grad(model(minibatch=True).sum(), model.x)[0]
    return full.double(), batch.double()


def cos2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) ** 2 / ((a * a).sum(-1) * (b * b).sum(-1))


def test_the_minibatch_gradient_shares_exactly_rho2_of_its_energy_at_every_step() -> None:
    model = model_of(RHO2)
    cfg = OptimConfig(name="conmezo", lr=1e-3, eps=0.01, unit_u=False, theta=1.3, fused=False)
    opt = build(model, cfg, seed=0)
    lr, beta = torch.full((4, 1), 1e-3), torch.full((4, 1), 0.99)
    previous = None
    for t in range(1, 31):
        model.draw(t)
        full, batch = gradients(model)
        measured = cos2(full, batch)
        torch.testing.assert_close(measured, torch.tensor(RHO2, dtype=torch.float64), rtol=1e-4, atol=0)
        torch.testing.assert_close(model.alignment(), measured, rtol=1e-5, atol=0)
        noise = batch - full  # n_b: ∇f_b − ∇F
        assert noise[0].abs().max() == 0  # ρ² = 1: no minibatch at all
        if previous is not None:  # a fresh minibatch every step: n_b ∝ A·w lives in ~d/ln d ≈ 50
            assert cos2(noise[1:], previous[1:]).max() < 0.5  # dimensions, cos² of two ~ 0.02
        previous = noise
        with torch.no_grad():
            opt.step(t, lambda probe: model(minibatch=True), lr, beta)
    assert not opt.rows.dead.any()


def test_the_minibatch_noise_is_unbiased() -> None:
    """E[n_b | x_t] = 0: the mean of N draws at a fixed x_t has norm ~‖n_b‖/√N (it is a mean of N
    independent vectors of one norm in ~d/ln d effective dimensions); 3× that is never reached."""
    model, draws = model_of([0.1, 0.01]), 400
    total = torch.zeros(2, D, dtype=torch.float64)
    for t in range(draws):
        model.draw(t)
        total += model.noise.double()
    size = model.noise.double().norm(dim=-1)
    assert ((total / draws).norm(dim=-1) < 3 * size / math.sqrt(draws)).all()


def test_both_probes_of_a_step_see_the_same_minibatch() -> None:
    """MeZO's p = (f_b(x+λz) − f_b(x−λz))/2λ is zᵀ∇f_b(x_t) exactly for a quadratic f_b: true only if
    both probes see one ξ_b. Against zᵀ∇F it is off by zᵀn_b, as a minibatch estimate should be."""
    model = model_of(RHO2)
    opt = build(model, OptimConfig(name="mezo", eps=0.01, fused=False), seed=3)
    model.draw(1)
    full, batch = gradients(model)
    with torch.no_grad():
        opt.step(1, lambda probe: model(minibatch=True), torch.full((4, 1), 1e-4), None)
    z = opt.direction(0).double()  # this step's z (MeZO: the step's noise)
    p = opt.projected_grad.double().view(-1)
    torch.testing.assert_close(p, (z * batch).sum(-1), rtol=1e-3, atol=1e-3)
    assert ((p - (z * full).sum(-1)).abs()[1:] > 0.1 * p.abs()[1:]).all()


def test_rows_of_one_stream_draw_the_same_w() -> None:
    """Common random numbers: the same trial's rows share w, so at the same x_t and ρ² they get the
    same n_b, and another stream gets another."""
    x0 = start_point(D, 10.0, 0).expand(3, D)
    model = NoisyQuadratics(x0, SIGMA, 1.0, 0.1, 5, streams=torch.tensor([0, 0, 1]), fused=False)
    model.draw(4)
    assert torch.equal(model.noise[0], model.noise[1])
    assert cos2(model.noise[0:1].double(), model.noise[2:3].double()).item() < 0.5


@pytest.mark.parametrize("method", synthetic.NOISE_METHODS)
def test_rho2_one_reproduces_the_noiseless_protocol_bitwise(method: str) -> None:
    """The rows at ρ² = 1 in a noisy batch are bitwise the same rows on the noiseless Quadratics; the
    rows at ρ² = 0.1 beside them are not (the noise is on), and their measured cos² is 0.1."""
    args = (method, 200, [1.0, 0.1], 150, 2, 0)
    noisy, forwards, cos2_samples = synthetic.run_noise(*args)
    clean, clean_forwards, _ = synthetic.run_noise(*args, noiseless=True)
    assert torch.isfinite(clean[1.0][-1]).all()
    assert torch.equal(noisy[1.0], clean[1.0])
    assert not torch.equal(noisy[0.1], clean[0.1])
    assert forwards == clean_forwards == 2
    assert torch.allclose(cos2_samples[1.0], torch.tensor(1.0, dtype=torch.float64))
    assert cos2_samples[0.1].numel() == 2 * len(synthetic.LR_FACTORS) * 2  # steps 1 and 101, η, trials
    torch.testing.assert_close(cos2_samples[0.1], torch.full_like(cos2_samples[0.1], 0.1), rtol=1e-4, atol=0)


def test_the_grid_writes_json_csv_and_heatmap(tmp_path: Path, monkeypatch, capsys) -> None:
    """Two d with their own horizons (NOISE_DIMS), both also read at COMMON_STEPS."""
    monkeypatch.setattr(synthetic, "NOISE_DIMS", {32: (120, 2), 64: (200, 2)})
    monkeypatch.setattr(synthetic, "COMMON_STEPS", 120)
    out = tmp_path / "noise.json"
    args = argparse.Namespace(
        method=None, rho2=[1.0, 0.1], dims=None, horizon=None, trials=None, seed=0, threads=1
    )
    synthetic.noise_grid(args, out)
    result = json.loads(out.read_text())
    assert [(c["d"], c["rho2"]) for c in result["cells"]] == [(32, 1.0), (32, 0.1), (64, 1.0), (64, 0.1)]
    for c in result["cells"]:
        assert c["cos2"]["mean"] == pytest.approx(c["rho2"], rel=1e-4)
        assert [h["steps"] for h in c["horizons"]] == {32: [60, 120], 64: [100, 120, 200]}[c["d"]]
        assert set(c["speedup"]) == {"mezo_momentum", "conmezo"}
        # the grid's η: factors of ρ²/tr(A), tr(A) = 2 Σσ
        trace = 2 * float(spectrum(c["d"], c["d"]).double().sum())
        assert c["lr_grid"][1] == pytest.approx(c["rho2"] / trace, rel=2e-3)
    printed = capsys.readouterr().out
    assert "at each d's horizon" in printed and "at 120 steps, every d" in printed
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 4 * 3 and {r["method"] for r in rows} == set(synthetic.NOISE_METHODS)
    assert out.with_suffix(".png").stat().st_size > 10_000
    synthetic.heatmap(result, tmp_path / "again.png")  # from the JSON alone
    assert (tmp_path / "again.png").stat().st_size > 10_000


def test_a_grid_that_died_resumes_at_the_next_d(tmp_path: Path, monkeypatch) -> None:
    """A finished d is kept in <out>.partial.json; the rerun computes only the rest, and its JSON has
    the same cells as a run in one go (no time in them: the draws are all seeded)."""
    monkeypatch.setattr(synthetic, "NOISE_DIMS", {32: (60, 2), 48: (60, 2)})
    monkeypatch.setattr(synthetic, "COMMON_STEPS", 60)
    args = argparse.Namespace(
        method=None, rho2=[1.0, 0.1], dims=None, horizon=None, trials=None, seed=0, threads=1
    )
    out, real, calls = tmp_path / "noise.json", synthetic.run_noise, []

    def dies_at_48(method: str, d: int, *rest):
        if d == 48:
            raise RuntimeError("killed")
        return real(method, d, *rest)

    def counted(method: str, d: int, *rest):
        calls.append(d)
        return real(method, d, *rest)

    monkeypatch.setattr(synthetic, "run_noise", dies_at_48)
    with pytest.raises(RuntimeError, match="killed"):
        synthetic.noise_grid(args, out)
    assert out.with_suffix(".partial.json").exists() and not out.exists()
    monkeypatch.setattr(synthetic, "run_noise", counted)
    synthetic.noise_grid(args, out)
    assert set(calls) == {48} and not out.with_suffix(".partial.json").exists()
    synthetic.noise_grid(args, tmp_path / "in_one_go.json")
    resumed, in_one_go = (json.loads(p.read_text()) for p in (out, tmp_path / "in_one_go.json"))
    assert [c["d"] for c in resumed["cells"]] == [32, 32, 48, 48]
    assert resumed["cells"] == in_one_go["cells"]
    assert set(resumed["seconds_by_d"]) == {"32", "48"}
