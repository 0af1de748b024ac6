"""HiZOO (Zhao et al., ICLR 2025): MeZO's direction scaled by a diagonal Hessian estimate H.

    L₀ = f(x),   L± = f(x ± ε u/√H),   u ~ N(0, I) regenerated from the step seed
    H ← (1−α) H + α |L₊ + L₋ − 2L₀| H u² / (2ε²)
    x ← x − η ((L₊ − L₋)/(2ε) · u/√H + wd·x)      with the *new* H (the forwards used the old one)

H costs one parameter-sized buffer (`hessian_dtype`, initialised to ones); a step takes three
forwards. The perturbed weights and the update are one kernel each per block or buffer, like
MeZO's: u is redrawn by flat index and 1/√H read from the stored slice, no z is ever built.

Choices the method leaves open:
- The logged training loss is L₀, the loss at x itself: the step pays for it anyway, and the mean
  of L₊ and L₋ (what MeZO logs) is L₀ plus a curvature bias of about ε²/2 · zᵀ∇²f z.
- Weight decay follows zo.flat's convention (matrices and embeddings only, as for every optimizer
  here), not the official code's decay of all parameters; the doc's default is wd = 0.
- The H update is computed in fp32 as H + αH(κu² − 1), κ = |L₊ + L₋ − 2L₀|/(2ε²), the same value
  as (1−α)H + ακHu² but without forming 1 − α, which is exactly 1 in fp32 for α = 1e-8. fp16/bf16
  storage of H is rounded stochastically like every other low-precision write.
- α = 0 is refused: H stays 1 and the method is MeZO with a wasted forward. α = 1 is refused too:
  H would drop to 0 (1/√H infinite) whenever L₊ + L₋ = 2L₀ exactly.
- `queries` (the official n repeats per step) is not offered: each repeat moves x before the next
  one's forwards, which makes it n steps at lr/n, so run n times the steps instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zo.flat import Run, Segment
from zo.noise import noise_at
from zo.optim import register
from zo.optim.base import DTYPES, OptimConfig, Probe, ZOOptimizer, index_of
from zo.rounding import round_to

PROBES = (Probe(0.0), Probe(+1.0), Probe(-1.0))  # L₀, L₊, L₋


@dataclass
class HiZOOConfig(OptimConfig):
    hessian_smooth: float = 1e-8  # α, the smoothing of the H estimate (README and LOREN: 1e-8)
    hessian_dtype: str = "fp32"  # fp32 | fp16 | bf16 | param: storage of H

    def checks(self) -> dict[str, tuple[bool, str]]:
        dtypes = [*DTYPES, "param"]
        return super().checks() | {
            "hessian_smooth": (
                0.0 < self.hessian_smooth < 1.0,
                "0 < hessian_smooth < 1 (0 keeps H = 1, i.e. MeZO with a wasted forward: use optimizer=mezo)",
            ),
            "hessian_dtype": (self.hessian_dtype in dtypes, "one of " + ", ".join(dtypes)),
        }


def preconditioned_at(
    x: torch.Tensor, h: torch.Tensor, idx: torch.Tensor, seed: int, noise: str, s: float
) -> torch.Tensor:
    """x + s·u/√H in x's dtype, u the step's noise (of kind `noise`) at flat indices idx (s = ±ε)."""
    return (x.float() + s * noise_at(noise)(idx, seed) * torch.rsqrt(h.float())).to(x.dtype)


def preconditioned(
    x: torch.Tensor, h: torch.Tensor, start: int, seed: int, noise: str, s: float
) -> torch.Tensor:
    """`preconditioned_at` over a contiguous stretch of the flat vector starting at index start
    (1-D, or seen as rows)."""
    return preconditioned_at(x, h, index_of(x, start), seed, noise, s)


def preconditioned_rows(
    rows: torch.Tensor, h: torch.Tensor, ids: torch.Tensor, start: int, seed: int, noise: str, s: float
) -> torch.Tensor:
    """Rows `ids` of a perturbed (V, H) matrix from its unperturbed rows; h is the matrix's whole H.
    Flat indices as in base.perturbed_rows, so an embedding agrees with its tied head."""
    width = rows.shape[-1]
    idx = start + ids.unsqueeze(-1) * width + torch.arange(width, device=rows.device)
    return preconditioned_at(rows, h[ids], idx, seed, noise, s)


def hizoo_step(
    x: torch.Tensor,
    h: torch.Tensor,
    start: int,
    seeds: tuple[int, int, int],
    noise: str,
    decay: float,
    curvature: float,
    alpha: float,
    proj: float,
    lr: float,
    sr: bool,
) -> None:
    """H ← H + αH(κu² − 1), then x ← decay·x − η p u/√H_new, in one pass (seeds: noise, x, H rounding)."""
    idx = index_of(x, start)
    u = noise_at(noise)(idx, seeds[0])
    h_old = h.float()
    h_new = h_old + alpha * h_old * (curvature * u * u - 1.0)
    x.copy_(round_to(decay * x.float() - (lr * proj) * u * torch.rsqrt(h_new), x.dtype, idx, seeds[1], sr))
    h.copy_(round_to(h_new, h.dtype, idx, seeds[2], sr))


@register
class HiZOO(ZOOptimizer):
    name = "hizoo"
    Config = HiZOOConfig
    supports_rows = True  # L₀, L±, κ and p are (R, 1) columns; H is per coordinate anyway

    def __init__(self, model: torch.nn.Module, cfg: HiZOOConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        dtype = DTYPES.get(cfg.hessian_dtype)  # None: "param", each buffer's own dtype
        self.hessian = [torch.ones_like(b.data, dtype=dtype or b.data.dtype) for b in self.flat.buffers]
        self.curvature = 0.0  # κ = |L₊ + L₋ − 2L₀| / (2ε²) of the current step

    def probes(self) -> tuple[Probe, ...]:
        return PROBES

    def logged_loss(self, losses: Sequence[float]) -> float:
        return losses[0]

    def _hessian_slice(self, run: Run) -> torch.Tensor:
        return self.hessian[run.group][run.start : run.end]

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        start, h = self.flat.slice(run)[1], self.rows.view(self._hessian_slice(run))
        seed, noise = self.noise_seed(), self.draw
        return self.kernel(preconditioned)(self.rows.view(x), h, start, seed, noise, scale).view_as(x)

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        run = seg.run()
        h = self._hessian_slice(run).view(seg.param.shape)
        start = self.flat.slice(run)[1]
        return self.kernel(preconditioned_rows)(rows, h, ids, start, self.noise_seed(), self.draw, scale)

    def estimate(self, losses: Sequence[float]) -> float:
        """p = (L₊ − L₋)/2ε, and the curvature along u that the update folds into H."""
        self.check_finite(losses)
        center, plus, minus = losses
        eps = self.cfg.eps
        self.curvature = abs(plus + minus - 2.0 * center) / (2.0 * eps * eps)
        return self.note_estimate((plus - minus) / (2.0 * eps))

    def update(self, lr: float, beta: float | None) -> None:
        seeds = (self.step_seed, self.round_seed(1), self.round_seed(2))
        step, alpha, sr = self.kernel(hizoo_step), self.cfg.hessian_smooth, self.cfg.stochastic_rounding
        noise = self.draw
        # slices() walks the update runs in order; H is sliced like x, so it needs the run's buffer.
        for run, (x, _, start, decay) in zip(self._update_runs, self.slices(lr), strict=True):
            h = self.rows.view(self._hessian_slice(run))
            step(x, h, start, seeds, noise, decay, self.curvature, alpha, self.projected_grad, lr, sr)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "hessian": self.hessian}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # name, d and layout, hence the buffers' shapes
        for mine, saved in zip(self.hessian, state["hessian"], strict=True):
            mine.copy_(saved)
