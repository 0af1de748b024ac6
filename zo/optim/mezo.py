"""MeZO (Malladi et al., 2023): z ~ N(0, I) regenerated from the step seed, no state at all.

With `optimizer.queries=q` it is n-SPSA: q two-point estimates along independent z_0..z_{q−1}
(probes (+1, k), (−1, k)), averaged: x ← x − η (1/q) Σ_k p_k z_k. The update draws the q noises
in one pass over x, not q passes: the weights are read and written (and stochastically rounded)
once, and drawing noise is compute, not memory traffic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zo.noise import noise_at
from zo.optim import register
from zo.optim.base import TWO_POINT, Probe, ZOOptimizer, index_of
from zo.rounding import round_to

Directions = tuple[tuple[int, float], ...]  # (noise seed, coefficient) per direction z_k


def noise_sum(idx: torch.Tensor, seed: int, noise: str, coef: float, others: Directions = ()) -> torch.Tensor:
    """coef·n_seed + Σ c_k·n_k at flat indices idx, fp32, each n of kind `noise`: Σ p_k z_k with the
    coefficients folded in. Inside a fused kernel the draws stay in registers."""
    draw = noise_at(noise)
    total = coef * draw(idx, seed)
    for s, c in others:
        total = total + c * draw(idx, s)
    return total


def mezo_step(
    x: torch.Tensor,
    start: int,
    seed: int,
    noise: str,
    round_seed: int,
    decay: float,
    step: float,
    sr: bool,
    others: Directions = (),
    limit: float | None = None,
) -> None:
    """x ← decay·x − step·z_0 − Σ c_k z_k with the z (of kind `noise`) redrawn in place (step = η·p):
    one pass over x. limit (Sparse-MeZO): only the entries with |x| ≤ limit move and decay."""
    idx = index_of(x, start)
    old = x.float()
    new = decay * old - noise_sum(idx, seed, noise, step, others)
    if limit is not None:
        new = torch.where(old.abs() <= limit, new, old)
    x.copy_(round_to(new, x.dtype, idx, round_seed, sr))


@register
class MeZO(ZOOptimizer):
    """x ← x − η ((1/q) Σ_k p_k z_k + wd·x); inference memory only."""

    name = "mezo"
    supports_queries = True
    supports_rows = True

    def __init_subclass__(cls, **kwargs) -> None:
        # A subclass takes queries > 1 only if it says so: an update that reads only z_0 (MeZO with
        # momentum, say) would otherwise silently drop the other q − 1 estimates. Likewise rows: its
        # own Python-side arithmetic must work on (R, 1) columns, which it has to say it does.
        super().__init_subclass__(**kwargs)
        cls.supports_queries = vars(cls).get("supports_queries", False)
        cls.supports_rows = vars(cls).get("supports_rows", False)

    estimates: list[float]  # p_k of this step, k = 0..q−1 (read by the update only when q > 1)

    def probes(self) -> Sequence[Probe]:
        q = self.cfg.queries
        return TWO_POINT if q == 1 else [Probe(s, k) for k in range(q) for s in (+1.0, -1.0)]

    def estimate(self, losses: Sequence[float]) -> float:
        """p_k = (f(x+λz_k) − f(x−λz_k)) / 2λ for each pair; the logged projected gradient is their mean."""
        self.check_finite(losses)
        eps2 = 2.0 * self.cfg.eps
        self.estimates = [(losses[i] - losses[i + 1]) / eps2 for i in range(0, len(losses), 2)]
        return self.note_estimate(sum(self.estimates[1:], self.estimates[0]) / len(self.estimates))

    def directions(self, scale: float) -> tuple[int, float, Directions]:
        """(seed of z_0, scale·p_0/q, the same pairs for z_1..z_{q−1}): the update's Σ p_k z_k, scaled."""
        # With one pair p_0 is the projected gradient itself, which a subclass's own `estimate` may set.
        estimates = self.estimates if self.cfg.queries > 1 else [self.projected_grad]
        q = len(estimates)
        pairs = [(self.noise_seed(k), scale * p / q) for k, p in enumerate(estimates)]
        return pairs[0][0], pairs[0][1], tuple(pairs[1:])

    def update(self, lr: float, beta: float | None) -> None:
        self.move(lr, lr)

    def move(self, step_lr: float, decay_lr: float) -> None:
        """x ← (1 − decay_lr·wd)·x − step_lr·(1/q) Σ_k p_k z_k: MeZO's update, whose two lrs are the
        same η (MEAZO's adaptive step keeps the decay at η)."""
        step, noise = self.kernel(mezo_step), self.draw
        seed, move, others = self.directions(step_lr)
        for x, _, start, decay in self.slices(decay_lr):
            step(x, start, seed, noise, self.round_seed(1), decay, move, self.cfg.stochastic_rounding, others)
