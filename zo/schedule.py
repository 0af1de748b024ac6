"""The momentum schedule β_t (ConMeZO §3.4).

Early on the momentum is mostly noise, so a cone around it would point nowhere
useful; ConMeZO therefore starts with β = 0.1 (momentum ≈ the latest estimate)
and eases it up to its final value. The intervals are defined for a 20K-step
run and scale with the run length (halved for 10K).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BetaSchedule:
    beta_final: float
    kind: str = "warmup"  # "warmup" | "constant"
    beta_start: float = 0.1
    flat_steps: float = 200.0  # β stays at beta_start up to here (for ref_steps)
    ramp_end: float = 2000.0  # β reaches ≈ beta_final here (for ref_steps)
    ref_steps: int = 20000  # run length the intervals above are written for
    total_steps: int = 20000

    def __call__(self, t: int) -> float:
        if self.kind == "constant":
            return self.beta_final
        scale = self.total_steps / self.ref_steps
        t_flat, t_end = self.flat_steps * scale, self.ramp_end * scale
        if t <= t_flat:
            return self.beta_start
        if t <= t_end:
            frac = (t - t_flat) / (t_end - t_flat)
            return self.beta_final - (self.beta_final - self.beta_start) / (1.0 + 8.0 * frac**1.8) ** 3
        return self.beta_final
