"""The momentum schedule β_t (ConMeZO §3.4).

Early on the momentum is mostly noise, so a cone around it would point nowhere
useful; ConMeZO therefore starts with β = 0.1 (momentum ≈ the latest estimate)
and eases it up to its final value. The intervals are defined for a 20K-step
run and scale with the run length (halved for 10K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The `schedule.*` keys (conf/schedule/*.yaml), with the values each may take."""

    kind: Literal["warmup", "constant"] = "warmup"
    beta_start: float = 0.1
    flat_steps: float = 200.0  # β stays at beta_start up to here (for ref_steps)
    ramp_end: float = 2000.0  # β reaches ≈ beta_final here (for ref_steps)
    ref_steps: int = 20000  # run length the intervals above are written for

    def checks(self) -> dict[str, tuple[bool, str]]:
        """key -> (value is allowed, what is allowed), as `OptimConfig.checks`. A ramp that ends
        where it starts would divide by zero; ref_steps scales the intervals, so 0 would too."""
        return {
            "beta_start": (0.0 <= self.beta_start < 1.0, "0 <= beta_start < 1"),
            "flat_steps": (self.flat_steps >= 0, "flat_steps >= 0"),
            "ramp_end": (self.ramp_end > self.flat_steps, f"ramp_end > flat_steps ({self.flat_steps})"),
            "ref_steps": (self.ref_steps >= 1, "ref_steps >= 1"),
        }


@dataclass(frozen=True, kw_only=True)
class BetaSchedule(ScheduleConfig):
    beta_final: float
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
