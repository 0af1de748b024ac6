"""ZO-Adam (MeZO-Adam of ZO-Bench) and, with `amsgrad`, ZO-AdaMM (Chen et al., 2019).

Adam on the MeZO estimate g = (1/q) Σ_k p_k z_k (+ wd·x, coupled weight decay as in ZO-Bench):

    m ← β₁ m + (1−β₁) g,   v ← β₂ v + (1−β₂) g²,   x ← x − η (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + δ)

g is regenerated inside the update kernel and never stored, so the state is the two moments
(2P), three with `amsgrad`, in `optimizer.state_dtype`. Draw, moments and step are one fused pass
per flat buffer. t counts the updates made (saved, so a resumed run corrects the same way).

AMSGrad follows torch.optim.Adam(amsgrad=True): the running max is taken of the raw v and
bias-corrected like v. ZO-AdaMM's paper has no bias correction; with it the first steps are
not damped towards zero.

β₁ is `optimizer.beta`, fixed: ZO-Adam is not `uses_beta`, so the warm-up schedule (written for
ConMeZO's momentum) does not ramp it. Adam's own bias correction already handles the start,
and the references (ZO-Bench, LOREN) use constant betas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zo import ZOError
from zo.optim import register
from zo.optim.base import DTYPES, OptimConfig, index_of
from zo.optim.mezo import Directions, MeZO, noise_sum
from zo.rounding import round_to


@dataclass
class ZOAdamConfig(OptimConfig):
    lr: float = 1e-5  # per-coordinate step ~η (see conf/optimizer/zo_adam.yaml)
    beta: float = 0.9  # β₁
    beta2: float = 0.999  # β₂
    delta: float = 1e-8  # δ, added to √v̂
    amsgrad: bool = False  # ZO-AdaMM: divide by the running max of v (a third buffer)
    state_dtype: str = "fp32"  # fp32 | fp16 | bf16 | param: storage of m, v (and the max)

    def checks(self) -> dict[str, tuple[bool, str]]:
        return (
            super().checks()
            | moment_checks(self.beta2, self.state_dtype)
            | {"delta": (self.delta > 0, "delta > 0")}
        )


def moment_checks(beta2: float, state_dtype: str) -> dict[str, tuple[bool, str]]:
    """The ranges of the Adam moments' keys, beta2 and state_dtype (ZO-Adam, R-AdaZO)."""
    dtypes = [*DTYPES, "param"]
    return {
        "beta2": (0.0 <= beta2 < 1.0, "0 <= beta2 < 1"),
        "state_dtype": (state_dtype in dtypes, "one of " + ", ".join(dtypes)),
    }


def adam_step(
    x: torch.Tensor,
    moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    start: int,
    direction: tuple[int, str, float, Directions],
    seeds: tuple[int, int, int, int],
    wd: float,
    lr: float,
    hyper: tuple[float, float, float, float, float],
    sr: bool,
    form: tuple[bool, bool] = (False, False),
) -> None:
    """g = Σ c_k z_k + wd·x, then m, v (and the max of v) and x, in one pass over the buffer.

    moments: (m, v, running max of v or None); direction: (seed, noise, coefficient, others) as in
    `noise_sum`; seeds: rounding of x, m, v, max; hyper: (β₁, β₂, 1−β₁ᵗ, 1−β₂ᵗ, δ);
    form (R-AdaZO): (v averages the new m² instead of g², δ inside the root: √(v̂ + δ)).
    """
    m, v, peak = moments
    b1, b2, c1, c2, delta = hyper
    second_of_m, delta_inside = form
    idx = index_of(x, start)
    x_old = x.float()
    g = noise_sum(idx, *direction) + wd * x_old
    m_new = b1 * m.float() + (1.0 - b1) * g
    fed = m_new if second_of_m else g
    v_new = b2 * v.float() + (1.0 - b2) * fed * fed
    m.copy_(round_to(m_new, m.dtype, idx, seeds[1], sr))
    v.copy_(round_to(v_new, v.dtype, idx, seeds[2], sr))
    if peak is not None:
        v_new = torch.maximum(peak.float(), v_new)
        peak.copy_(round_to(v_new, peak.dtype, idx, seeds[3], sr))
    root = torch.sqrt(v_new / c2 + delta) if delta_inside else torch.sqrt(v_new / c2) + delta
    new = x_old - lr * (m_new / c1) / root
    x.copy_(round_to(new, x.dtype, idx, seeds[0], sr))


@register
class ZOAdam(MeZO):
    name = "zo_adam"
    Config = ZOAdamConfig
    supports_queries = True
    supports_rows = True  # per-row η and estimates broadcast as (R, 1) columns over (R, d) views

    def __init__(self, model: nn.Module, cfg: ZOAdamConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.momentum = self.new_momentum()  # m: saved by the base, and the vector alignment logs
        self.second = self.new_momentum()  # v
        self.peak = self.new_momentum() if cfg.amsgrad else []  # running max of v
        self.steps = 0

    def momentum_dtype(self, p: torch.Tensor) -> torch.dtype:
        return p.dtype if self.cfg.state_dtype == "param" else DTYPES[self.cfg.state_dtype]

    def adam_form(self) -> tuple[tuple[float, float, float, float, float], tuple[bool, bool]]:
        """`adam_step`'s hyper and form for this update (t = self.steps): Adam, bias-corrected."""
        cfg, t = self.cfg, self.steps
        return (cfg.beta, cfg.beta2, 1.0 - cfg.beta**t, 1.0 - cfg.beta2**t, cfg.delta), (False, False)

    def update(self, lr: float, beta: float | None) -> None:
        cfg = self.cfg
        self.steps += 1
        hyper, form = self.adam_form()
        seed, coef, others = self.directions(1.0)  # g = (1/q) Σ p_k z_k
        direction = (seed, self.draw, coef, others)
        seeds = (self.round_seed(1), self.round_seed(2), self.round_seed(3), self.round_seed(4))
        step = self.kernel(adam_step)
        assert self.momentum is not None
        # Walks the base's update runs itself (not `slices`): Adam needs wd, not a decay factor.
        for run in self._update_runs:
            x, start = self.flat.slice(run)
            buf, part = run.group, slice(run.start, run.end)
            moments = (
                self.rows.view(self.momentum[buf][part]),
                self.rows.view(self.second[buf][part]),
                self.rows.view(self.peak[buf][part]) if self.peak else None,
            )
            wd = cfg.weight_decay if run.segments[0].decays else 0.0
            x = self.rows.view(x)
            step(x, moments, start, direction, seeds, wd, lr, hyper, cfg.stochastic_rounding, form)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "second": self.second, "peak": self.peak, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key, mine in (("second", self.second), ("peak", self.peak)):
            saved = state.get(key)
            if saved is None or [t.shape for t in saved] != [t.shape for t in mine]:
                raise ZOError(
                    f"checkpoint's ZO-Adam state '{key}' does not match this run (optimizer.amsgrad "
                    f"is {self.cfg.amsgrad}): resume with the same optimizer.amsgrad or force=true"
                )
            for buf, value in zip(mine, saved, strict=True):
                buf.copy_(value)
        self.steps = int(state["steps"])
