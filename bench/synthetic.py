"""Steps-to-objective on the ConMeZO paper's synthetic quadratic (§5.1, App. C.1, Fig. 3).

Every (setting, repeat, trial) is one row of a batched quadratic (zo.quadratic.Quadratics) that the
project's own optimizers run as independent problems (zo.optim.base.Rows): per-row η, β, θ, one
set of kernels, no second copy of the math. The ratio reported is MeZO's steps to its final mean
objective over the steps another method needs to reach that value, both means over the trials.

The paper's two (--protocol), d = 1000, x₀ of norm 10, λ = 0.01, no warm-up (β, θ constant), 5 trials:

  code (default): what the authors' code (synthetic-experiment/ in the ConMeZO repository) runs:
      f = ½xᵀAx, eigenvalues geometric from 1/κ to 1 with κ = d³ = 1e9; η = 0.01 for every method,
      β = 0.99 (their α_m = 0.01), θ = 1.30; one x₀ for all trials; 100k steps. The ratio is read
      at 5k, 20k, 50k and 100k steps from the same curves (target: MeZO's mean at that step).
  text: the paper's words: f = Σ σ_i x_i² with σ geometric from 1/d to 1 (κ = d); the grid
      η ∈ {1, 1e-1, 1e-2, 1e-3, 1e-4}, β ∈ {0.8, 0.9, 0.95, 0.99}, θ ∈ {1.2, 1.3, 1.4, 1.5}
      (where a method has the key); one x₀ per trial. Each horizon (1/20, 1/5, 1/2 and all of
      --steps: 5k, 20k, 50k, 100k) picks its own best setting per method by the mean objective at
      that step, so one run of the whole grid serves every horizon (nothing depends on the horizon).

The methods beside ConMeZO (MEAZO, ZO-Adam, HiZOO, LOREN, FZOO, Sparse-MeZO, R-AdaZO) are tuned on
η alone, their other keys at the defaults of conf/optimizer/ (MEAZO β = 0.999; ZO-Adam β₁ = 0.9,
β₂ = 0.999; HiZOO α = 1e-8; LOREN K = 10 probes, λ = 0.1, η_cov = 1e-3; FZOO N = 8 Rademacher
probes, code form; Sparse-MeZO s = 0.8, h fixed at step 0, per row; R-AdaZO K = 2, β₁ = 0.9,
β₂ = 0.999), with the protocol's perturbation scale 0.01 (FZOO's ε). In the code protocol they get
its single η = 0.01 like every method, which is not a tuned step for the adaptive ones (their
per-coordinate step is ~η): read them from the text protocol. The ratio counts steps;
`speedup_forwards` counts forwards (HiZOO takes 3 a step, LOREN 10, FZOO 9, R-AdaZO 3, the others
2). FZOO, Sparse-MeZO and R-AdaZO are opt-in (--method), like LOREN, so the default set stays the
one of docs/results.md §1's main table. LOREN cannot run rows, so its trials run one by one
(slow: about 1 ms a step). LOZO has no row: on a vector its perturbation is MeZO's full Gaussian
(U·Vᵀ applies to matrices), so it would be MeZO with other noise.

In both, u ~ N(0, I)/√d inside the cone (optimizer.unit_u=false: the authors' code, and the
paper's practical choice), so ‖z‖² ≈ d as for MeZO. A row counts as diverged (inf from then on)
from its first non-finite value or a value above 1e10 (the authors' rule; in fp32 a diverging row
can also stall at a huge finite f where ±λz is below f's resolution); a setting with a diverged
trial loses its search. Known differences from the authors' code: their m_0 = 0 with a plain
Gaussian first step, ours m_0 = u_0 (ConMeZO's Algorithm 1); fp32 here, float64 there; our own noise.

One run of the code protocol rests on one x₀, and its ratio moves with that draw: 1.92–2.36× at
100k over five draws here, and a float64 restatement of the authors' loop gives 1.95–2.29× over
six seeds of its own but 2.45× (1.79× at 20k) with their seeds, the figure of the paper. So the
code protocol runs --repeats 5 independent copies (x₀ from --seed + r, their own noise) in the same
batches at almost no cost (d = 1000 is overhead-bound), and reports each repeat and their mean
beside repeat 0, the headline.

noise (--protocol noise, issue #31): when does the cone pay once the probes see a minibatch? The
text protocol's problem, F(x) = Σ σ_i x_i² = ½xᵀAx (A = 2 diag σ, κ = d), whose probes at step t
evaluate a minibatch objective instead (zo.quadratic.NoisyQuadratics):

    f_b(x) = F(x) + ⟨n_b, x − x_t⟩ = ½(x − ξ_b)ᵀA(x − ξ_b) + const,   ξ_b = −A⁻¹n_b,
    n_b = k·(A·w − (⟨A·w, g⟩/‖g‖²)·g),   w ~ N(0, I_d) from (--seed, t, trial),   g = ∇F(x_t) = A·x_t,
    k ≥ 0 with ‖n_b‖² = (1/ρ² − 1)·‖g‖².

So ∇f_b(x_t) = g + n_b with n_b ⟂ g, and cos²(∇f_b(x_t), ∇F(x_t)) = ‖g‖²/(‖g‖² + ‖n_b‖²) = ρ²
exactly at every step and for every draw (up to fp32 rounding; the JSON records the measured value
every 100 steps), not only in expectation as an isotropic n_b would give it (off by ~(1/ρ² − 1)/d
relative). E[n_b | x_t] = 0, so ∇f_b is unbiased; n_b has the shape of A·w, a minibatch whose
centres ξ are spread isotropically, minus the one component along g. What is modelled, not measured:
the noise's size follows ‖∇F(x_t)‖ (fixed signal-to-noise, vanishing at the optimum, where real
minibatch noise does not), and its shape. Both probes of a step (x_t ± λz) see the same ξ_b; f_b is
quadratic, so their difference is exactly zᵀ∇f_b(x_t). The curves and the speedups are on the
noiseless F. ρ² = 1 is n_b = 0 (F itself, bitwise: tested against the noiseless batch).

Grid: ρ² ∈ {1, 0.3, 0.1, 0.03, 0.01} × d ∈ {1e3, 1e4, 1e5}; MeZO, MeZO + momentum (the control),
ConMeZO; β = 0.99 for both momenta, θ = 1.3 (the code protocol's, in the paper's grid); η tuned per
cell and method over {2, 1, 1/2, 1/4, 1/8}·ρ²/tr(A), where MeZO's expected one-step decrease of F,
η‖g‖² − ½η² tr(A)‖g‖²/ρ², peaks (tr A ≈ 2d/ln d; pilots put the best η at 1/8 to 2 of it, lower
for shorter horizons). Horizon and trials per d (NOISE_DIMS): 20,000 steps × 5 trials at d = 1e3,
8,000 × 3 at 1e4, 2,000 × 2 at 1e5, sized to under one CPU-hour in all (a step costs ~45–50 ns per
row and coordinate at d ≥ 1e4; at 1e3, 125 rows, ~12 ms); every d is also read at 2,000 steps.
Trial k has the same x₀ and the same w stream for every method, setting and ρ² (common random
numbers), so the bootstrap resamples trials paired. One batch per method and d holds every
(ρ², η, trial) row.
Writes the JSON (per cell: each horizon as below, the measured cos², the η grid and whether the
chosen η is at its edge), a CSV of the cells at their horizon, and the heatmap (.png) of ρ² × d →
speedup, with the SmolLM2 study of docs/results.md §3 (median cos² ≈ 0.03 at d = 1.3e8) marked
past the d axis:

    python bench/synthetic.py --protocol noise                                   # ~60 min CPU
    python bench/synthetic.py --protocol noise --dims 1000 --horizon 2000 --trials 2 --out /tmp/n.json
    python bench/synthetic.py --protocol noise --replot                          # heatmap from the JSON

Writes the JSON (`speedup_mezo_over_conmezo`, `speedup_mezo_over` each method, `forwards_per_step`,
`steps`, `protocol`; every horizon with a 95% bootstrap over trials, the repeats, the final
objective at each η, the curves, the times) and the figure beside it (.png, .svg: mean ± standard
error over trials, log scale; one panel per horizon for `text`). Times on 2 shared cores (1 thread;
CPU time is what an idle core would need):

    python bench/synthetic.py --out bench/results/synthetic_code.json                  # 4 min CPU
    python bench/synthetic.py --protocol text --out bench/results/synthetic_text.json  # 7.5 min CPU
    python bench/synthetic.py --protocol text --method fzoo --method sparse_mezo --method r_adazo \\
        --out bench/results/synthetic_text_leaders.json                               # the leaders
    python bench/synthetic.py --protocol text --steps 2000 --trials 2 --out /tmp/s.json  # smoke check
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch

from zo import ZOError
from zo.noise import mix
from zo.optim import build, get
from zo.optim.base import OptimConfig
from zo.quadratic import NoisyQuadratics, Quadratics, spectrum, start_point

METHODS = {  # the grid keys each method is tuned on (its other keys keep their defaults)
    "mezo": ("lr",),
    "mezo_momentum": ("lr", "beta"),
    "conmezo": ("lr", "beta", "theta"),
    "meazo": ("lr",),
    "zo_adam": ("lr",),
    "hizoo": ("lr",),
    "loren": ("lr",),
    "fzoo": ("lr",),  # after loren: the earlier methods' batch seeds (their index here) stay as they were
    "sparse_mezo": ("lr",),
    "r_adazo": ("lr",),
}
BASELINE = "mezo"
KEPT = (BASELINE, "conmezo")  # always run: the baseline and the paper's method (title, repeats table)
# LOREN runs one problem at a time: --method loren; the leaders FZOO, Sparse-MeZO, R-AdaZO by --method too
DEFAULT = [m for m in METHODS if m not in ("loren", "fzoo", "sparse_mezo", "r_adazo")]
GRID = {"lr": (1.0, 1e-1, 1e-2, 1e-3, 1e-4), "beta": (0.8, 0.9, 0.95, 0.99), "theta": (1.2, 1.3, 1.4, 1.5)}
HORIZONS = (20, 5, 2, 1)  # horizons are --steps divided by these: 5k, 20k, 50k, 100k of 100k
DIVERGED = 1e10
# Methods whose whole grid runs as one batch, not one per η: their rows rarely diverge (FZOO's step
# is normalised, Sparse-MeZO freezes most of x, R-AdaZO's is ~η per coordinate), so a per-η batch
# would not stop early, and at d = 1000 a step of 25 rows costs about what one of 5 does (the time
# is per-step overhead). A row's trajectory does not depend on the batch it is in (tests/
# test_batched.py), only its noise on its indices: this saves time (1 batch of 25 rows, not 5 of 5).
ONE_BATCH = ("fzoo", "sparse_mezo", "r_adazo")
EPS, INIT_NORM = 0.01, 10.0
BOOTSTRAP = 200
FUSED = True  # compiled optimizer and noise kernels (the tests run them eagerly: no compile time)


@dataclass(frozen=True)
class Protocol:
    kappa_power: int  # κ = d ** kappa_power
    scale: float  # f = scale · Σ σ_i x_i²
    grid: dict[str, tuple[float, ...]]
    same_start: bool  # one x₀ for every trial (the authors' code) or one per trial
    repeats: int  # independent runs of the whole protocol (their own x₀ and noise), by default


PROTOCOLS = {
    "code": Protocol(3, 0.5, {"lr": (1e-2,), "beta": (0.99,), "theta": (1.30,)}, same_start=True, repeats=5),
    "text": Protocol(1, 1.0, GRID, same_start=False, repeats=1),
}


# --protocol noise: the text protocol's problem (κ = d, f = Σ σ_i x_i²) with minibatch probes.
RHO2 = (1.0, 0.3, 0.1, 0.03, 0.01)  # cos²(∇f_b, ∇F)
NOISE_DIMS = {1_000: (20_000, 5), 10_000: (8_000, 3), 100_000: (2_000, 2)}  # d: (horizon, trials)
COMMON_STEPS = 2_000  # every d is also read at this many steps (the largest d's horizon)
NOISE_METHODS = ("mezo", "mezo_momentum", "conmezo")
NOISE_KEYS = {"beta": (0.99,), "theta": (1.3,)}  # the code protocol's β, θ (in the paper's grid)
LR_FACTORS = (2.0, 1.0, 0.5, 0.25, 0.125)  # η = factor · ρ²/tr(A), around MeZO's greedy optimum
ALIGN_EVERY = 100  # the noise protocol records cos²(∇f_b, ∇F) at steps 1, 101, 201, ...
SMOLLM2 = {  # docs/results.md §3, the one measured point of a real run
    "d": 134_515_008,
    "rho2": 0.03,  # median cos²(∇f_b, ∇F), a batch of 8 against 256 examples (ConMeZO, sst2_review)
    "speedup": {"conmezo": (1.00, 0.89), "mezo_momentum": (0.83, 0.89)},  # dev loss: sst2_review, bbcnews
}


def noise_protocol(d: int, rho2: float) -> Protocol:
    """One cell of the noise grid: the text protocol's problem and β, θ = NOISE_KEYS, with an η grid
    centred on ρ²/tr(A), A = 2 diag σ. With z ~ N(0, I) and the minibatch gradient's energy
    ‖∇F‖²/ρ², MeZO's expected decrease of F in one step is η‖∇F‖² − ½η² tr(A)‖∇F‖²/ρ² to leading
    order in d: largest at η = ρ²/tr(A), negative from twice that. tr(A) ≈ 2d/ln d."""
    text = PROTOCOLS["text"]
    trace = 2 * text.scale * float(spectrum(d, float(d) ** text.kappa_power).double().sum())
    lr = tuple(float(f"{f * rho2 / trace:.3g}") for f in LR_FACTORS)
    return Protocol(text.kappa_power, text.scale, {"lr": lr, **NOISE_KEYS}, same_start=False, repeats=1)


def settings(method: str, protocol: Protocol) -> list[dict[str, float]]:
    keys = METHODS[method]
    return [dict(zip(keys, v, strict=True)) for v in itertools.product(*(protocol.grid[k] for k in keys))]


def run_rows(
    method: str, rows: list[dict[str, float]], starts: torch.Tensor, protocol: Protocol, steps: int, seed: int
) -> tuple[torch.Tensor, float]:
    """f(x_t), t = 0..steps, of each row (a setting and its start), as (steps + 1, rows), and the
    forwards a step took. One batch through the optimizer, or, for an optimizer that cannot run
    rows (LOREN), one run per row. A diverged row reads inf from then on."""
    d = starts.shape[1]
    sigma = spectrum(d, float(d) ** protocol.kappa_power)
    if get(method).supports_rows:
        return run_batch(method, rows, Quadratics(starts, sigma, protocol.scale), steps, seed)
    runs = [
        run_batch(method, [row], Quadratics(x0, sigma, protocol.scale), steps, mix(seed, i))
        for i, (row, x0) in enumerate(zip(rows, starts, strict=True))
    ]
    return torch.cat([values for values, _ in runs], 1), runs[0][1]


def run_batch(
    method: str, rows: list[dict[str, float]], model: Quadratics, steps: int, seed: int
) -> tuple[torch.Tensor, float]:
    """`run_rows` on one model: R rows (`Rows`: per-row settings as columns), or one problem (floats;
    a non-finite loss stops it, which here only marks it diverged). Stops when every row has. Each
    step first draws the model's minibatch (`Quadratics.draw`: none without noise), which its
    probes see; the recorded f(x_t) is the noiseless F."""
    batched = model.zo_rows > 1

    def setting(key: str) -> torch.Tensor | float:
        return torch.tensor([[r[key]] for r in rows], dtype=torch.float32) if batched else rows[0][key]

    per_row = {"theta": setting("theta")} if "theta" in rows[0] else {}
    opt = build(model, OptimConfig(name=method, eps=EPS, unit_u=False, fused=FUSED, **per_row), seed=seed)
    lr, beta = setting("lr"), setting("beta") if "beta" in rows[0] else None
    values = torch.full((steps + 1, len(rows)), math.inf)
    dead = torch.zeros(len(rows), dtype=torch.bool)
    forwards = 0

    def loss_at(probe) -> torch.Tensor | float:
        nonlocal forwards
        forwards += 1
        return model(minibatch=True) if batched else float(model(minibatch=True))

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # stalled (diverged) rows: they lose anyway
        values[0] = model().view(-1)
        for t in range(1, steps + 1):
            model.draw(t)
            try:
                opt.step(t, loss_at, lr, beta)
            except ZOError:  # one problem, non-finite: diverged
                break
            f = model().view(-1)
            dead |= (opt.rows.dead.view(-1) if batched else False) | ~(f <= DIVERGED)  # NaN compares False
            values[t] = f.masked_fill(dead, math.inf)
            if dead.all() and (t % 100 == 0 or not batched):
                break
    return values, forwards / max(t, 1)


def run_method(
    method: str, protocol: Protocol, d: int, steps: int, shape: tuple[int, int], seed: int
) -> tuple[torch.Tensor, float]:
    """(steps + 1, settings, repeats, trials) curves of every grid point (shape: repeats, trials),
    and the forwards per step:
    one batch per η (a batch whose rows have all diverged stops; large η diverge within a few
    hundred steps), or, for the methods of ONE_BATCH, the whole grid in one batch. Repeat r draws
    its x₀ from seed + r; its noise differs by its rows' indices."""
    grid = settings(method, protocol)
    repeats, trials = shape
    starts = torch.stack(
        [
            start_point(d, INIT_NORM, mix(seed + r, 0 if protocol.same_start else k))
            for r in range(repeats)
            for k in range(trials)
        ]
    )
    by_lr: dict[float | str, list[int]] = {}
    for i, s in enumerate(grid):
        by_lr.setdefault(s["lr"] if method not in ONE_BATCH else "all", []).append(i)
    out = torch.empty(steps + 1, len(grid), repeats, trials)
    forwards = 0.0
    for j, (lr, idx) in enumerate(by_lr.items()):
        rows = [grid[i] for i in idx for _ in range(repeats * trials)]
        batch_seed = mix(seed, list(METHODS).index(method), j)
        values, forwards = run_rows(method, rows, starts.repeat(len(idx), 1), protocol, steps, batch_seed)
        out[:, idx] = values.view(steps + 1, len(idx), repeats, trials)
        print(f"  {method} η={lr}: {len(rows)} rows, {int(torch.isinf(values[-1]).sum())} diverged")
    return out, forwards


def steps_to(curve: torch.Tensor, target: float) -> int | None:
    """First step t ≥ 1 with curve[t] ≤ target (curve[0] is x₀)."""
    hit = torch.nonzero(curve[1:] <= target)
    return int(hit[0]) + 1 if len(hit) else None


def ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a and b else None


def number(v: float) -> float | None:
    """A value for the JSON: None where a setting diverged (inf) or its spread is undefined."""
    return v if math.isfinite(v) else None


def bootstrap(
    base: torch.Tensor, other: torch.Tensor, horizon: int, seed: int, paired: bool = False
) -> list[float]:
    """95% interval of the steps ratio when each method's trials are resampled with replacement
    (paired: the same trials for both, where trial k is the same x₀ and noise for every method)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(BOOTSTRAP):
        if paired:
            idx = torch.randint(base.shape[1], (base.shape[1],), generator=gen)
            pick = [c[:, idx].mean(1) for c in (base, other)]
        else:
            pick = [
                c[:, torch.randint(c.shape[1], (c.shape[1],), generator=gen)].mean(1) for c in (base, other)
            ]
        target = float(pick[0][horizon])
        r = ratio(steps_to(pick[0][: horizon + 1], target), steps_to(pick[1], target))
        out.append(r if r is not None else 0.0)  # never reached: slower than any ratio
    q = torch.tensor(out).quantile(torch.tensor([0.025, 0.975]))
    return [round(float(v), 3) for v in q]


def analyse(
    curves: dict[str, torch.Tensor],
    grids: dict[str, list[dict]],
    forwards: dict[str, float],
    steps: int,
    seed: int | None,
    at: list[int] | None = None,
    paired: bool = False,
) -> list[dict]:
    """For each horizon H: each method's best setting at H, MeZO's mean at H as the target, the
    steps each method needs to reach it, and MeZO's steps over theirs (with a bootstrap interval
    over trials, drawn from seed, unless seed is None; `bootstrap`'s paired), also counted in
    forwards (HiZOO takes 3 a step, LOREN K = 10, FZOO N + 1 = 9, R-AdaZO K + 1 = 3, the others 2).
    curves: (steps + 1, settings, trials). Horizons: at, or steps divided by HORIZONS."""
    means = {m: c.mean(-1).double() for m, c in curves.items()}  # inf where any trial diverged
    out = []
    for h in at or [steps // div for div in HORIZONS]:
        best = {m: int(torch.argmin(means[m][h])) for m in curves}
        base = means[BASELINE][:, best[BASELINE]]
        target = float(base[h])
        reach_base = steps_to(base[: h + 1], target)
        rows = {}
        for m in curves:
            mean, per_trial = means[m][:, best[m]], curves[m][:, best[m]].double()
            reach = steps_to(mean, target)
            rows[m] = {
                "setting": grids[m][best[m]],
                "grid_index": best[m],
                "final_mean": number(float(mean[h])),
                "final_se": number(float(per_trial[h].std() / math.sqrt(per_trial.shape[1]))),
                "steps_to_target": reach,
                "speedup": ratio(reach_base, reach),
                "speedup_forwards": ratio(
                    reach_base and round(reach_base * forwards[BASELINE]),
                    reach and round(reach * forwards[m]),
                ),
            }
            if m != BASELINE and seed is not None:
                rows[m]["speedup_95"] = bootstrap(
                    curves[BASELINE][:, best[BASELINE]].double(), per_trial, h, seed, paired
                )
        out.append({"steps": h, "target": number(target), "methods": rows})
    return out


def repeat_table(per_repeat: list[list[dict]]) -> dict:
    """Each method's ratio at each horizon in every repeat of the protocol, and their mean."""
    out = {}
    for m in [m for m in per_repeat[0][0]["methods"] if m != BASELINE]:
        out[m] = {}
        for i, h in enumerate(per_repeat[0]):
            values = [rep[i]["methods"][m]["speedup"] for rep in per_repeat]
            reached = [v for v in values if v is not None]
            mean = sum(reached) / len(reached) if len(reached) == len(values) else None
            out[m][str(h["steps"])] = {"each": values, "mean": mean}
    return out


def step_size_table(curves: dict[str, torch.Tensor], grids: dict[str, list[dict]]) -> dict:
    """Final mean objective at each η of the grid, the best over the method's other keys."""
    table = {}
    for m, c in curves.items():
        final = c[-1].double().mean(-1)
        table[m] = {
            f"{lr:g}": number(min(float(final[i]) for i, s in enumerate(grids[m]) if s["lr"] == lr))
            for lr in dict.fromkeys(s["lr"] for s in grids[m])
        }
    return table


def curve_points(curves: dict[str, torch.Tensor], horizon: dict, points: int) -> dict:
    """Mean and standard error over trials of each method's setting tuned at this horizon."""
    h = horizon["steps"]
    at = torch.unique(torch.linspace(0, h, points).round().long())
    out: dict = {"step": at.tolist()}
    for m, c in curves.items():
        trials = c[:, horizon["methods"][m]["grid_index"]].double()[at]
        out[m] = {
            "mean": trials.mean(1).tolist(),
            "se": (trials.std(1) / math.sqrt(trials.shape[1])).tolist(),
        }
    return out


def plot(
    horizons: list[dict], curves: dict[str, torch.Tensor], per_horizon: bool, title: str, out: Path
) -> None:
    """Like the paper's Fig. 3. One panel per horizon when each is tuned on its own, else the whole run
    with MeZO's value at each horizon (dotted) and the ratios in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = horizons if per_horizon else horizons[-1:]
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False)
    for ax, horizon in zip(axes.flat, panels, strict=True):
        points = curve_points(curves, horizon, 1000)
        for m in curves:
            mean, se = torch.tensor(points[m]["mean"]), torch.tensor(points[m]["se"])
            setting = shown_setting(horizon["methods"][m]["setting"])
            ax.plot(points["step"], mean, label=f"{m} ({setting})", lw=1.2)
            ax.fill_between(points["step"], (mean - se).clamp_min(1e-300), mean + se, alpha=0.25)
        shown = [horizon] if per_horizon else horizons
        ax.set_title(
            "MeZO / ConMeZO steps: "
            + ", ".join(f"{h['steps']:,}: {h['methods']['conmezo']['speedup'] or 0:.2f}×" for h in shown),
            fontsize=8,
        )
        for h in shown:
            if h["target"] is not None:
                ax.axhline(h["target"], color="grey", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("f(x_t), mean ± s.e. over trials")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for suffix in (".png", ".svg"):
        fig.savefig(out.with_suffix(suffix), dpi=130)
    plt.close(fig)


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, torch {torch.__version__}, {threads} thread(s), {date.today()}"


def timing(threads: int, started: float, cpu: float) -> dict:
    """The machine, and the wall and CPU seconds since `started` and `cpu`, for a result's JSON."""
    return {
        "machine": machine(threads),
        "seconds": round(time.time() - started),
        "cpu_seconds": round(time.process_time() - cpu),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocol", choices=[*sorted(PROTOCOLS), "noise"], default="code")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=None, help="default 5 (noise: per d, NOISE_DIMS)")
    parser.add_argument("--repeats", type=int, default=None, help="default: code 5, text 1")
    parser.add_argument("--d", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="draws x₀ and every batch's noise")
    parser.add_argument(
        "--method",
        action="append",
        choices=list(METHODS),
        help="only these (and MeZO, ConMeZO); default: all but loren, fzoo, sparse_mezo, r_adazo",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is reported too)")
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/synthetic_<protocol>.json"
    )
    noise = parser.add_argument_group("--protocol noise")
    noise.add_argument("--rho2", type=float, nargs="+", help=f"default {' '.join(map(str, RHO2))}")
    noise.add_argument("--dims", type=int, nargs="+", help=f"default {' '.join(map(str, NOISE_DIMS))}")
    noise.add_argument("--horizon", type=int, help="steps for every d (default: per d, NOISE_DIMS)")
    noise.add_argument("--replot", action="store_true", help="only the tables and heatmap, from --out's JSON")
    args = parser.parse_args()
    out = args.out or Path(f"bench/results/synthetic_{args.protocol}.json")
    if args.protocol == "noise":
        torch.set_num_threads(args.threads)
        if args.replot:
            result = json.loads(out.read_text())
            noise_report(result)
            heatmap(result, out.with_suffix(".png"))
        else:
            noise_grid(args, out)
        return
    args.trials = args.trials or 5
    protocol = PROTOCOLS[args.protocol]
    repeats = args.repeats or protocol.repeats
    torch.set_num_threads(args.threads)
    started, cpu = time.time(), time.process_time()

    methods = [m for m in METHODS if m in KEPT or m in (args.method or DEFAULT)]
    grids = {m: settings(m, protocol) for m in methods}
    all_runs, forwards, seconds = {}, {}, {}
    for m in methods:
        wall, cpu_m = time.time(), time.process_time()
        shape = (repeats, args.trials)
        all_runs[m], forwards[m] = run_method(m, protocol, args.d, args.steps, shape, args.seed)
        seconds[m] = {"wall": round(time.time() - wall), "cpu": round(time.process_time() - cpu_m)}
    per_repeat = [
        analyse(
            {m: c[:, :, r] for m, c in all_runs.items()},
            grids,
            forwards,
            args.steps,
            None if r else args.seed,  # the bootstrap is repeat 0's
        )
        for r in range(repeats)
    ]
    horizons = per_repeat[0]
    curves = {m: c[:, :, 0] for m, c in all_runs.items()}
    final = horizons[-1]["methods"]
    result = {
        "protocol": args.protocol,
        "steps": args.steps,
        "speedup_mezo_over_conmezo": final["conmezo"]["speedup"],
        "speedup_mezo_over": {m: r["speedup"] for m, r in final.items() if m != BASELINE},
        "forwards_per_step": forwards,
        "horizons": horizons,
        "repeats": repeat_table(per_repeat),
        "step_size": step_size_table(curves, grids),
        "curves": curve_points(curves, horizons[-1], 500),
        "setup": {
            **asdict(protocol),
            "d": args.d,
            "kappa": float(args.d) ** protocol.kappa_power,
            "eps": EPS,
            "init_norm": INIT_NORM,
            "unit_u": False,
            "trials": args.trials,
            "repeats": repeats,
            "seed": args.seed,
        },
        **timing(args.threads, started, cpu),
        "seconds_by_method": seconds,
    }
    report(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    title = f"{args.protocol} protocol: d={args.d}, κ={result['setup']['kappa']:g}, {args.trials} trials"
    plot(horizons, curves, any(len(g) > 1 for g in grids.values()), title, out)
    print(f"wrote {out} (+ .png, .svg) in {result['seconds']} s ({result['cpu_seconds']} s of CPU)")


def shown(value: float | None) -> str:
    return "diverged" if value is None else f"{value:.4g}"


def shown_setting(setting: dict[str, float]) -> str:
    names = {"lr": "η", "beta": "β", "theta": "θ"}
    return " ".join(f"{names[k]}={v:g}" for k, v in setting.items())


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    table = Table(
        title=f"{result['protocol']} protocol: steps to MeZO's mean at the horizon (each tuned there)"
    )
    for col in (
        "horizon",
        "method",
        "setting",
        "f at horizon ± se",
        "steps to it",
        "MeZO / it",
        "95% (trials)",
        "in forwards",
    ):
        table.add_column(col)
    for h in result["horizons"]:
        for m, r in h["methods"].items():
            low_high = r.get("speedup_95") if r["speedup"] else None  # never reached: no interval
            table.add_row(
                f"{h['steps']:,}",
                m,
                shown_setting(r["setting"]),
                shown(r["final_mean"]) + (f" ± {r['final_se']:.2g}" if r["final_se"] is not None else ""),
                str(r["steps_to_target"]),
                f"{r['speedup']:.2f}×" if r["speedup"] else "never",
                f"{low_high[0]:.2f}–{low_high[1]:.2f}" if low_high else "",
                f"{r['speedup_forwards']:.2f}×" if r["speedup_forwards"] else "never",
            )
    console.print(table)
    by_repeat = result["repeats"]["conmezo"]
    if len(next(iter(by_repeat.values()))["each"]) > 1:
        reps = Table(title="MeZO steps / ConMeZO steps in each repeat of the protocol (its own x₀ and noise)")
        reps.add_column("horizon")
        for r in range(len(next(iter(by_repeat.values()))["each"])):
            reps.add_column(f"repeat {r}")
        reps.add_column("mean")
        for h, row in by_repeat.items():
            cells = [f"{v:.2f}×" if v else "never" for v in row["each"]]
            reps.add_row(f"{int(h):,}", *cells, f"{row['mean']:.2f}×" if row["mean"] else "")
        console.print(reps)
    sizes = Table(title="final mean objective at each η (best other keys)")
    lrs = list(next(iter(result["step_size"].values())))
    sizes.add_column("method")
    for lr in lrs:
        sizes.add_column(f"η={lr}")
    for m, by_lr in result["step_size"].items():
        sizes.add_row(m, *(shown(by_lr[lr]) for lr in lrs))
    console.print(sizes)


# ---- --protocol noise ------------------------------------------------------------------------------
def run_noise(
    method: str, d: int, rho2s: list[float], steps: int, trials: int, seed: int, noiseless: bool = False
) -> tuple[dict[float, torch.Tensor], float, dict[float, torch.Tensor]]:
    """Every (ρ², setting, trial) of one method at one d as the rows of one batch (at d = 1000 a step
    is mostly overhead, so one batch instead of one per cell and η is ~5× cheaper). Returns, per ρ²,
    the (steps + 1, settings, trials) curves of F, the forwards per step, and per ρ² the measured
    cos²(∇f_b, ∇F) of its live rows every ALIGN_EVERY steps. Trial k starts from the text
    protocol's x₀ and draws its minibatches from stream k of seed, whatever the method, setting and
    ρ² (common random numbers). noiseless: the same batch on `Quadratics` (no minibatch at all)."""
    grids = {r: settings(method, noise_protocol(d, r)) for r in rho2s}
    rows = [s for r in rho2s for s in grids[r] for _ in range(trials)]
    rho2 = torch.tensor([r for r in rho2s for _ in range(len(grids[r]) * trials)])
    starts = torch.stack([start_point(d, INIT_NORM, mix(seed, k)) for k in range(trials)])
    starts = starts.repeat(len(rows) // trials, 1)
    sigma, scale = spectrum(d, float(d)), PROTOCOLS["text"].scale
    if noiseless:
        model = Quadratics(starts, sigma, scale)
    else:
        streams = torch.arange(len(rows)) % trials
        model = NoisyQuadratics(starts, sigma, scale, rho2, seed, streams, FUSED, ALIGN_EVERY)
    values, forwards = run_batch(method, rows, model, steps, mix(seed, list(METHODS).index(method)))
    aligned = torch.stack(model.aligned) if getattr(model, "aligned", None) else torch.ones(1, len(rows))
    curves, cos2, at = {}, {}, 0
    for r in rho2s:
        n = len(grids[r]) * trials
        curves[r] = values[:, at : at + n].reshape(steps + 1, len(grids[r]), trials)
        group = aligned[:, at : at + n]
        cos2[r] = group[torch.isfinite(group)]
        at += n
    print(f"  {method} d={d}: {len(rows)} rows, {int(torch.isinf(values[-1]).sum())} diverged")
    return curves, forwards, cos2


def noise_grid(args: argparse.Namespace, out: Path) -> None:
    """The (ρ², d) grid of the noise protocol: JSON, CSV and heatmap beside each other at `out`.
    Each finished d is kept in <out>.partial.json (cells and times), so a run that dies (the machine
    is shared) resumes at the next d with the same settings; times are summed over the runs."""
    methods = [m for m in NOISE_METHODS if m in KEPT or not args.method or m in args.method]
    rho2s, dims = list(args.rho2 or RHO2), list(args.dims or NOISE_DIMS)
    text = PROTOCOLS["text"]
    setup = {
        "kappa_power": text.kappa_power,
        "scale": text.scale,
        "lr_factors": list(LR_FACTORS),
        **{k: v[0] for k, v in NOISE_KEYS.items()},
        "eps": EPS,
        "init_norm": INIT_NORM,
        "unit_u": False,
        "seed": args.seed,
    }
    key = json.loads(json.dumps({"rho2": rho2s, "methods": methods, "setup": setup, "fused": FUSED}))
    partial = out.with_suffix(".partial.json")
    done = json.loads(partial.read_text()) if partial.exists() else {}
    if done.get("key") != key:
        done = {"key": key, "by_d": {}}
    for d in dims:
        steps, trials = NOISE_DIMS.get(d, (10 * d, 2))
        steps, trials = args.horizon or steps, args.trials or trials
        kept = done["by_d"].get(str(d))
        if kept and (kept["steps"], kept["trials"]) == (steps, trials):
            print(f"d={d}: kept from {partial} ({kept['cpu_seconds']} s of CPU then)")
            continue
        print(f"d={d}: {steps} steps, {trials} trials, ρ² = {rho2s}")
        started, cpu = time.time(), time.process_time()
        runs, seconds = {}, {}
        for m in methods:
            wall, cpu_m = time.time(), time.process_time()
            runs[m] = run_noise(m, d, rho2s, steps, trials, args.seed)
            seconds[m] = {"wall": round(time.time() - wall), "cpu": round(time.process_time() - cpu_m)}
        cells = [noise_cell(d, r, runs, steps, trials, args.seed) for r in rho2s]
        done["by_d"][str(d)] = {
            "steps": steps,
            "trials": trials,
            "cells": cells,
            "seconds_by_method": seconds,
            "seconds": round(time.time() - started),
            "cpu_seconds": round(time.process_time() - cpu),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(done))
    by_d = {d: done["by_d"][str(d)] for d in dims}
    result = {
        "protocol": "noise",
        "rho2": rho2s,
        "d": dims,
        "methods": methods,
        "cells": [c for run in by_d.values() for c in run["cells"]],
        "setup": setup,
        "smollm2": SMOLLM2,
        "machine": machine(args.threads),
        "seconds": sum(run["seconds"] for run in by_d.values()),
        "cpu_seconds": sum(run["cpu_seconds"] for run in by_d.values()),
        "seconds_by_d": {
            str(d): {k: run[k] for k in ("seconds", "cpu_seconds", "seconds_by_method")}
            for d, run in by_d.items()
        },
    }
    out.write_text(json.dumps(result, indent=1))  # first: the tables and the figure can be redone from it
    partial.unlink()
    noise_csv(result, out.with_suffix(".csv"))
    noise_report(result)
    heatmap(result, out.with_suffix(".png"))
    print(f"wrote {out} (+ .csv, .png): {result['seconds']} s, {result['cpu_seconds']} s of CPU")


def noise_cell(d: int, rho2: float, runs: dict, steps: int, trials: int, seed: int) -> dict:
    """One (ρ², d) cell from every method's `run_noise` at d: each horizon (`analyse`: η tuned there,
    paired bootstrap), the measured cos², the η grid and whether the chosen η is at its edge."""
    protocol = noise_protocol(d, rho2)
    methods = list(runs)
    grids = {m: settings(m, protocol) for m in methods}
    curves = {m: runs[m][0][rho2] for m in methods}
    at = sorted({min(COMMON_STEPS, steps), steps // 2, steps})
    horizons = analyse(curves, grids, {m: runs[m][1] for m in methods}, steps, seed, at, paired=True)
    cos2 = torch.cat([runs[m][2][rho2] for m in methods])
    lrs, final = protocol.grid["lr"], horizons[-1]["methods"]
    print(f"  ρ²={rho2:g}: { ({m: v['speedup'] for m, v in final.items() if m != BASELINE}) }")
    return {
        "d": d,
        "rho2": rho2,
        "steps": steps,
        "trials": trials,
        "lr_grid": list(lrs),
        "f0": float(curves[BASELINE][0].double().mean()),
        "speedup": {m: v["speedup"] for m, v in final.items() if m != BASELINE},
        "f_ratio": {  # its mean F over MeZO's at the horizon: how far off a "never" is
            m: v["final_mean"] / final[BASELINE]["final_mean"] if v["final_mean"] else None
            for m, v in final.items()
            if m != BASELINE
        },
        "lr_at_edge": {m: v["setting"]["lr"] in (max(lrs), min(lrs)) for m, v in final.items()},
        "cos2": {
            "mean": float(cos2.mean()),
            "min": float(cos2.min()),
            "max": float(cos2.max()),
            "samples": cos2.numel(),
        },
        "horizons": horizons,
        "step_size": step_size_table(curves, grids),
    }


def noise_csv(result: dict, out: Path) -> None:
    """One row per (d, ρ², method) at the cell's horizon."""
    import csv

    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "d",
                "rho2",
                "steps",
                "trials",
                "method",
                "lr",
                "beta",
                "theta",
                "final_mean",
                "final_se",
                "steps_to_target",
                "speedup",
                "speedup_95_low",
                "speedup_95_high",
                "lr_at_edge",
                "cos2_mean",
            ]
        )
        for c in result["cells"]:
            for m, r in c["horizons"][-1]["methods"].items():
                low, high = r.get("speedup_95") or (None, None)
                s = r["setting"]
                w.writerow(
                    [
                        c["d"],
                        c["rho2"],
                        c["steps"],
                        c["trials"],
                        m,
                        s["lr"],
                        s.get("beta", ""),
                        s.get("theta", ""),
                        r["final_mean"],
                        r["final_se"],
                        r["steps_to_target"],
                        r["speedup"],
                        low,
                        high,
                        c["lr_at_edge"][m],
                        round(c["cos2"]["mean"], 6),
                    ]
                )


def cell_text(r: dict, f_ratio: float | None = None) -> str:
    """A speedup and its interval, for the tables ("never": the target was not reached; then the
    method's F at the horizon over MeZO's)."""
    if not r["speedup"]:
        return f"never (F {f_ratio:.2f}×)" if f_ratio else "never"
    low, high = r.get("speedup_95") or (None, None)
    return f"{r['speedup']:.2f}× ({low:.2f}–{high:.2f})" if high else f"{r['speedup']:.2f}×"


def noise_cell_text(cell: dict, method: str, steps: int | None) -> str:
    """`cell_text` of a noise cell at its horizon (steps None) or at the horizon with that many steps."""
    h = next(h for h in cell["horizons"] if h["steps"] == (steps or cell["steps"]))
    base, r = h["methods"][BASELINE]["final_mean"], h["methods"][method]
    return cell_text(r, r["final_mean"] / base if r["final_mean"] and base else None)


def noise_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    cells = {(c["rho2"], c["d"]): c for c in result["cells"]}
    shared = set.intersection(*({h["steps"] for h in c["horizons"]} for c in result["cells"]))
    readings = [("at each d's horizon", None)]
    if shared:  # the longest horizon every cell was read at (COMMON_STEPS)
        readings.append((f"at {max(shared):,} steps, every d", max(shared)))
    for m, (title, at) in itertools.product([m for m in result["methods"] if m != BASELINE], readings):
        table = Table(title=f"noise protocol: MeZO steps / {m} steps to MeZO's mean F {title} (95%)")
        table.add_column("ρ²")
        for d in result["d"]:
            steps = at or next(c["steps"] for c in result["cells"] if c["d"] == d)
            table.add_column(f"d = {d:g}, {steps:,} steps")
        for rho2 in result["rho2"]:
            row = [cells.get((rho2, d)) for d in result["d"]]
            table.add_row(f"{rho2:g}", *(noise_cell_text(c, m, at) if c else "" for c in row))
        console.print(table)
    tuned = Table(
        title="η chosen at the horizon (* at the grid's edge), MeZO's F at the horizon / F(x₀), cos²"
    )
    for col in ("d", "ρ²", *result["methods"], "MeZO F_H / F₀", "measured cos² (min–max)"):
        tuned.add_column(col)
    for c in result["cells"]:
        final = c["horizons"][-1]["methods"]
        tuned.add_row(
            f"{c['d']:g}",
            f"{c['rho2']:g}",
            *(
                f"{final[m]['setting']['lr']:.3g}" + ("*" if c["lr_at_edge"][m] else "")
                for m in result["methods"]
            ),
            f"{final[BASELINE]['final_mean'] / c['f0']:.3g}",
            f"{c['cos2']['mean']:.4f} ({c['cos2']['min']:.4f}–{c['cos2']['max']:.4f})",
        )
    console.print(tuned)


def heatmap(result: dict, out: Path) -> None:
    """ρ² × d → speedup over MeZO at each d's horizon, one panel per method (ConMeZO, MeZO +
    momentum), from the noise protocol's JSON. The SmolLM2 study of docs/results.md §3 lies off the
    d grid: it gets a column of its own past a dashed line, a star at its measured ρ² with the
    speedups it measured (sst2_review / bbcnews dev loss) under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FixedLocator, NullLocator

    names = {"conmezo": "ConMeZO", "mezo_momentum": "MeZO + momentum"}
    methods = [m for m in ("conmezo", "mezo_momentum") if m in result["methods"]]
    rho2s, dims = result["rho2"], result["d"]
    cells = {(c["rho2"], c["d"]): c for c in result["cells"]}
    smol = result.get("smollm2")
    smol = smol if smol and smol["rho2"] in rho2s else None
    norm = LogNorm(vmin=0.25, vmax=4.0)
    fig, axes = plt.subplots(
        1, len(methods), figsize=(4.6 * len(methods) + 1.2, 4.6), squeeze=False, constrained_layout=True
    )
    image = None
    for ax, m in zip(axes[0], methods, strict=True):
        grid = torch.full((len(rho2s), len(dims)), math.nan)
        for (rho2, d), c in cells.items():
            grid[rho2s.index(rho2), dims.index(d)] = c["speedup"][m] or math.nan  # never: grey, not a ratio
        ax.set_facecolor("0.85")  # a "never" often misses MeZO's F by < 1%: no speedup colour fits it
        image = ax.imshow(grid.numpy(), cmap="RdBu", norm=norm, aspect="auto")
        for (rho2, d), c in cells.items():
            v, f = c["speedup"][m], c["f_ratio"][m]
            ax.text(
                dims.index(d),
                rho2s.index(rho2),
                f"{v:.2f}×" if v else "never\n" + (f"F {f:.2f}×" if f else "diverged"),
                ha="center",
                va="center",
                fontsize=8,
                color="black" if not v or 0.5 < v < 2 else "white",
            )
        steps = {d: c["steps"] for (_, d), c in cells.items()}
        labels = [f"1e{round(math.log10(d))}" if math.log10(d).is_integer() else f"{d:g}" for d in dims]
        labels = [f"{t}\n{steps[d]:,} steps" for t, d in zip(labels, dims, strict=True)]
        ax.set_xlim(-0.5, len(dims) - 0.5 + (1.1 if smol else 0))
        if smol:
            ax.axvspan(len(dims) - 0.5, len(dims) + 0.6, color="white", zorder=1)  # not a grid cell
            ax.axvline(len(dims) - 0.5, color="black", lw=1, ls="--", zorder=2)
            x, y = len(dims) + 0.05, rho2s.index(smol["rho2"])
            ax.plot([x], [y], marker="*", ms=16, color="gold", mec="black", zorder=5)
            low, high = sorted(smol["speedup"][m])
            ax.text(x, y + 0.32, f"{low:.2f}–{high:.2f}×", ha="center", va="center", fontsize=8)
            labels.append(f"{smol['d']:.1e}\nSmolLM2 (§3)")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(rho2s)), [f"{r:g}" for r in rho2s])
        ax.set_xlabel("d, and the horizon the speedup is read at")
        ax.set_title(f"MeZO steps / {names[m]} steps", fontsize=10)
    axes[0][0].set_ylabel("ρ² = cos²(∇f_b, ∇F)")
    label = "speedup over MeZO (grey: never reached; F: its F / MeZO's)"
    bar = fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9, label=label)
    bar.ax.yaxis.set_major_locator(FixedLocator([0.25, 0.5, 1, 2, 4]))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.set_yticklabels(["0.25×", "0.5×", "1×", "2×", "4×"])
    fig.suptitle(
        "Quadratic f = Σσᵢxᵢ² (κ = d) whose probes see a minibatch with cos²(∇f_b, ∇F) = ρ²; "
        f"η tuned per cell, β = {result['setup']['beta']}, θ = {result['setup']['theta']}",
        fontsize=9,
    )
    fig.savefig(out, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
