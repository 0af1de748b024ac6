"""FZOO (Dang et al., ICLR 2026, arXiv 2506.09034): N one-sided Rademacher probes, normalised by their spread.

    l_0 = f(x),   l_k = f(x + ε z_k),  z_k ∈ {±1}^d,  k = 1..N   (all on the step's batch)
    σ = std(l_1..l_N)   (population, ddof 0; l_0 not included)
    code form:   c_k = (l_k − l_0) / (N σ)                 (no 1/ε)
    paper form:  c_k = (l_k − l_0) / (ε N σ_s)             (σ_s the sample std, ddof 1)
    x ← x − η Σ_k c_k z_k

Since l_k − l_0 ≈ ε gᵀz_k and σ ≈ ε‖g‖, the code form's step is ≈ η (1/N) Σ (gᵀz_k/‖g‖) z_k:
normalised SGD, independent of ε and of the gradient's scale. The two forms differ by a constant,
η_code = η_paper·√((N−1)/N)/ε (zo-methods.md §7 (i)).

Where the sources leave a choice (zo-methods.md §7):
- The code form is the default (`form=code`): the published (lr, ε) pairs were run with it. The
  paper form is second-hand (the project page and a catalogue restatement; the PDF was not read):
  ĝ = Σ (l_k − l_0) z_k/(εN), x ← x − η ĝ/σ_s with σ_s over N − 1.
- z_k is the probe k's noise (`noise_seed`, k = 1..N), Rademacher by default (`optimizer.noise`,
  the reference's `dist=rademacher`); `noise=gaussian` is allowed.
- The update draws all N directions in one pass over the weights (MeZO's n-SPSA kernel), summed in
  fp32 and rounded once; the reference adds the N terms one seed at a time in place. Equal in exact
  arithmetic; in fp32 they differ by float rounding, in fp16/bf16 ours rounds once instead of N times.
- Skipped steps (the guard is ours; the reference would write inf/NaN into the weights): when σ is 0
  (every probe saw the same loss) or σ or a c_k is not finite (finite losses whose spread overflows),
  nothing moves (no weight decay either), `skipped` counts it (saved in the state, logged per step as
  `skipped`), and the step's projected gradient is 0, so the stall warning (base.STALL_STEPS) and
  the runner's train.stall_steps see a run that keeps skipping. A non-finite *loss* is not skipped:
  it stops the run (Diverged) as it does for every method, since a NaN l_0 means x itself is broken
  and skipping would leave it so.
- projected_grad logs σ/ε, an estimate of ‖∇f‖ (E[(gᵀz)²] = ‖g‖² for Rademacher z); 0 on a skip.
- Weight decay is not in the reference; the shared key applies as MeZO's coupled decay (default 0).
- The batched forward (§7 (ii)): by default the N + 1 forwards run one after another, as in the
  released trainer; `optimizer.batched_probes=true` runs them side by side in one (zo.batched).
  The loss-reuse branch and the `thre`/`D` flags (§7 (iii), dead code) are left out.
- `queries` is N; at most 254, because the trajectory log stores up to 255 losses a step.
- Rows (R problems side by side, base.Rows: bench/synthetic.py): σ, the c_k and the skip are per
  row, computed in float64 from the (R, 1) loss columns like the floats of one problem. A row whose
  σ is 0 or not finite gets c_k = 0 and η = 0 (so no decay either) while the others move; `skipped`
  is then an (R, 1) count per row, and a dead row (a non-finite loss, `Rows.dead`) skips every step
  without a warning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zo.optim import register
from zo.optim.base import OptimConfig, Probe, Rows, ZOOptimizer
from zo.optim.mezo import mezo_step

FORMS = ("code", "paper")


@dataclass
class FZOOConfig(OptimConfig):
    lr: float = 1e-5  # fzoo.sh (code form, ε = 1e-3): the step is ~η per coordinate whatever ε and ‖∇f‖
    queries: int = 8  # N, one-sided probes a step (plus one forward at x)
    noise: str = "rademacher"  # the reference's z_k ∈ {±1}^d
    form: str = "code"  # code: c_k = (l_k − l_0)/(Nσ) | paper: (l_k − l_0)/(εNσ_s), σ_s over N − 1

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "queries": (
                2 <= self.queries <= 254,
                "2 <= queries <= 254 (σ needs two probes; the log holds 255 losses a step)",
            ),
            "form": (self.form in FORMS, "one of " + ", ".join(FORMS)),
        }


@register
class FZOO(ZOOptimizer):
    name = "fzoo"
    Config = FZOOConfig
    supports_queries = True
    supports_rows = True  # σ, c_k and the skip per row, as (R, 1) columns

    def __init__(self, model, cfg: FZOOConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self._probes = (Probe(0.0), *(Probe(1.0, k) for k in range(1, cfg.queries + 1)))
        self.coef: list | None = None  # c_1..c_N of the step (floats, or (R, 1) columns); None: skipped
        self.moving: torch.Tensor | None = None  # rows: which rows move this step (None: one problem)
        self.skipped: int | torch.Tensor = 0  # rows: an (R, 1) count per row

    def probes(self) -> Sequence[Probe]:
        return self._probes

    def logged_loss(self, losses: Sequence[float]) -> float:
        return losses[0]

    def step_metrics(self) -> dict[str, float]:
        return {"skipped": self.skipped}

    def estimate(self, losses: Sequence[float]) -> float:
        """c_k from l_0 and l_1..l_N (in `probes()` order); returns σ/ε, or 0 for a skipped step."""
        self.check_finite(losses)
        if isinstance(self.rows, Rows):
            return self._estimate_rows(losses)
        center, probes = losses[0], losses[1:]
        n, eps = len(probes), self.cfg.eps
        mean = sum(probes) / n
        sigma = math.sqrt(sum((f - mean) * (f - mean) for f in probes) / n)  # `**` raises on overflow
        denom = n * sigma if self.cfg.form == "code" else eps * n * sigma * math.sqrt(n / (n - 1))
        coef = [(f - center) / denom for f in probes] if sigma > 0.0 else []
        if not (sigma > 0.0 and math.isfinite(sigma) and all(math.isfinite(c) for c in coef)):
            self.coef = None
            self.skipped += 1
            warnings.warn(
                f"fzoo skipped a step: the {n} probes' loss spread σ is {sigma:g} (all probes saw the same "
                "loss, or their spread overflowed); the weights did not move",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.note_estimate(0.0)
        self.coef = coef
        return self.note_estimate(sigma / eps)

    def _estimate_rows(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """`estimate` per row of (R, 1) loss columns: a row whose σ is 0 or not finite skips alone."""
        center, probes = losses[0].double(), torch.cat([f.double() for f in losses[1:]], 1)  # (R, N)
        n, eps = probes.shape[1], self.cfg.eps
        sigma = (probes - probes.mean(1, keepdim=True)).square().mean(1, keepdim=True).sqrt()
        denom = n * sigma if self.cfg.form == "code" else eps * n * sigma * math.sqrt(n / (n - 1))
        coef = (probes - center) / denom
        ok = (sigma > 0.0) & sigma.isfinite() & coef.isfinite().all(1, keepdim=True)
        self.coef = list(torch.where(ok, coef, 0.0).float().split(1, dim=1))
        self.moving = ok
        self.skipped = self.skipped + (~ok).long()
        if (~ok & ~self.rows.dead).any():
            warnings.warn(
                f"fzoo skipped a step in some rows: their {n} probes' loss spread σ is 0 or not finite; "
                "those rows did not move",
                RuntimeWarning,
                stacklevel=3,
            )
        return self.note_estimate(torch.where(ok, sigma / eps, 0.0).float())

    def update(self, lr: float, beta: float | None) -> None:
        """x ← decay·x − η Σ_k c_k z_k, the N directions redrawn in one pass (nothing on a skipped step;
        rows: η = 0 on a skipped row, so it neither moves nor decays)."""
        if self.coef is None:
            return
        if self.moving is not None:
            lr = torch.where(self.moving, torch.as_tensor(lr, dtype=torch.float32), 0.0)
        (seed, move), *others = [(self.noise_seed(k), lr * c) for k, c in enumerate(self.coef, start=1)]
        step, noise, sr = self.kernel(mezo_step), self.draw, self.cfg.stochastic_rounding
        for x, _, start, decay in self.slices(lr):
            step(x, start, seed, noise, self.round_seed(1), decay, move, sr, tuple(others))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        skipped = state["skipped"]
        self.skipped = skipped.clone() if isinstance(skipped, torch.Tensor) else int(skipped)
