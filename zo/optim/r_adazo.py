"""R-AdaZO (Shu, Zhang, He, Dai, ICML 2025, arXiv 2502.01014): Adam whose v averages the new m².

    ĝ = (1/K) Σ_k (f(x + εz_k) − f(x))/ε · z_k          (K + 1 forwards on the step's batch)
    m ← β₁ m + (1−β₁) ĝ,   v ← β₂ v + (1−β₂) m²,   x ← x − η m/(√v + ζ)

The only change from ZO-AdaMM is that v is fed the new m², not ĝ²: the moments are ZO-Adam's
buffers (2P, `optimizer.state_dtype`) and the pass is `zo_adam.adam_step` with its R-AdaZO form.
ĝ is never stored: the update regenerates z_1..z_K from their seeds inside that one pass per buffer,
as MeZO's n-SPSA does. The probes are x itself (scale 0) once, then x + εz_k for k = 1..K
(`Probe(1, k − 1)`: z_1 is the step seed's z, the others MeZO's query seeds); the logged loss is
f(x), the projected gradient the mean of the K one-sided (f_k − f_0)/ε.

Choices where the sources leave one (doc §9):
- The estimator is the paper's whole-vector one with the runner's z (Gaussian; Rademacher with
  `optimizer.noise`), no normalisation and no factor d (m/√v does not see a constant rescaling of
  ĝ, apart from ζ). The official code's per-tensor unit-sphere probes (2K forwards per tensor) are
  not implemented.
- ζ outside the root, as the code does; `zeta_inside=true` is the paper's √(v + ζ).
- `bias_correction` (ours; neither source has one) divides v by 1 − β₂ᵗ and leaves m as it is:
  v averages m², so m/√v̂ compares m with its own running scale, and the first step is exactly
  η·sign(ĝ) as doc §9 says the flag should give. NOTE: doc §9's "bias correction" variant numbers
  are Adam's correction of both moments (m/(1−β₁ᵗ) too), whose first step is η·sign(ĝ)/(1−β₁) =
  10η, against the doc's own sentence; we follow the sentence (tests pin both numbers).
- Coupled weight decay as ZO-Adam (ĝ + wd·x); neither source uses weight decay.
- The doc's central-difference option (`radazo_estimator=central`) is not exposed.
- Rows (R problems side by side, base.Rows: bench/synthetic.py): m, v are per coordinate anyway;
  the p_k, their mean and η are (R, 1) columns, β₁, β₂, ζ and the step count shared by every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from zo.optim import register
from zo.optim.base import OptimConfig, Probe
from zo.optim.zo_adam import ZOAdam, moment_checks


@dataclass
class RAdaZOConfig(OptimConfig):
    lr: float = 1e-6  # see conf/optimizer/r_adazo.yaml: ZO-Adam's 1e-5 lowered for the early steps
    queries: int = 2  # K one-sided probes a step, besides the one at x
    beta: float = 0.9  # β₁, fixed (not warmed up by schedule=)
    beta2: float = 0.999  # β₂
    zeta: float = 1e-8  # ζ, added to √v (inside the root with zeta_inside)
    bias_correction: bool = False  # divide v by 1 − β₂ᵗ: the first step is η·sign(ĝ)
    zeta_inside: bool = False  # √(v + ζ) (the paper) instead of √v + ζ (the code)
    state_dtype: str = "fp32"  # fp32 | fp16 | bf16 | param: storage of m, v
    amsgrad: ClassVar[bool] = False  # not a key: ZO-Adam's running max of v is never kept here

    def checks(self) -> dict[str, tuple[bool, str]]:
        return (
            super().checks()
            | moment_checks(self.beta2, self.state_dtype)
            | {"zeta": (self.zeta > 0, "zeta > 0")}
        )


@register
class RAdaZO(ZOAdam):
    name = "r_adazo"
    Config = RAdaZOConfig
    supports_queries = True
    supports_rows = True  # p_k and η are (R, 1) columns over (R, d) views of x, m, v (as ZO-Adam)

    def probes(self) -> Sequence[Probe]:
        return (Probe(0.0), *(Probe(1.0, k) for k in range(self.cfg.queries)))

    def logged_loss(self, losses: Sequence[float]) -> float:
        """f(x), the loss at the weights themselves."""
        return losses[0]

    def estimate(self, losses: Sequence[float]) -> float:
        """p_k = (f_k − f_0)/ε, so ĝ = (1/K) Σ p_k z_k; the logged projected gradient is their mean."""
        self.check_finite(losses)
        base, eps = losses[0], self.cfg.eps
        self.estimates = [(f - base) / eps for f in losses[1:]]
        return self.note_estimate(sum(self.estimates[1:], self.estimates[0]) / len(self.estimates))

    def adam_form(self) -> tuple[tuple[float, float, float, float, float], tuple[bool, bool]]:
        cfg = self.cfg
        corrected = 1.0 - cfg.beta2**self.steps if cfg.bias_correction else 1.0
        return (cfg.beta, cfg.beta2, 1.0, corrected, cfg.zeta), (True, cfg.zeta_inside)
