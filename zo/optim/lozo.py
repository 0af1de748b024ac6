"""LOZO and LOZO-M (Chen et al., ICLR 2025): low-rank perturbations of the weight matrices.

Each matrix W (m×n: m = shape[0], n = the rest) is perturbed along P = U·Vᵀ instead of a
full Gaussian z. U ∈ R^{m×r} is drawn from the step seed; V ∈ R^{n×r} (plain N(0, 1), not
orthonormalised) is stored and redrawn every ν steps. Vectors (biases, norms) get MeZO's z:

    c = (f(x + εP) − f(x − εP)) / 2ε
    LOZO:    W ← W − η (c·U Vᵀ + wd·W),   x ← x − η (c z + wd x)       (no 1/r: the official code)
    LOZO-M:  N ← β N + (1−β) c U  (N = cU at a redraw with no V_old),   W ← W − η (N Vᵀ + wd·W),
             vectors m ← β m + (1−β) c z (m = cz at the first step),   x ← x − η (m + wd x)

When V has just been redrawn and an old V is kept, LOZO-M first carries N into the new basis:
N ← β N V_oldᵀV_new / n + (1−β) c U. V_old ← V is stored on steps with s % ν == ν−1.

Step numbering: the reference counts s = 0, 1, …; the runner's step t = 1..T is s = t − 1, so V
is redrawn at t = 1, ν+1, 2ν+1, … (V at step s is always the one drawn for s − s mod ν, also for
a run that starts at another step) and V_old is stored at t = ν, 2ν, …. A redraw step with no
V_old kept sets N = cU, as the first step does. With ν = 1 V is redrawn every step and, as in the
reference, V_old is never stored, so every step sets N = cU: at ν = 1 the matrices carry no
momentum (N would otherwise mix U's of unrelated V bases), while the vectors still do (doc §3).

Noise. U's element (i, j) of a matrix whose flat start index is S is the counter-based normal at
index r·S + r·i + j under a seed mixed from the probe's seed, so any rows of U (a head chunk,
the rows an embedding looked up) are rebuilt alone; the ranges of different matrices never
overlap, and the tag keeps them apart from the vectors' z (which is MeZO's, at their own flat
indices). V is drawn the same way from (seed, redraw step). No parameter-sized z exists: a
perturbed block is built matrix by matrix in pieces of rows, and the update runs in the same pieces.
A piece is one addmm (x ± ε·U Vᵀ, or decay·x − η·left·Vᵀ); only the update's stochastic rounding is
a compiled kernel (with optimizer.fused), as are the vectors' MeZO passes.

State (all ≪ P): V per matrix; for LOZO-M also N, V_old and the vectors' momentum, kept in fp32
(optimizer.momentum_dtype is not used). β is the fixed `momentum` key, not the warm-up schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from zo import ZOError
from zo.flat import Run, Segment, block_limit
from zo.noise import EAGER_PIECE, mix, noise_at, positions
from zo.optim import register
from zo.optim.base import OptimConfig, ZOOptimizer
from zo.optim.mezo import mezo_step
from zo.optim.mezo_momentum import momentum_step
from zo.rounding import round_to

U_TAG, V_TAG = 0x10205, 0x10206  # seed salts of U (per probe) and V (per redraw)


@dataclass
class LOZOConfig(OptimConfig):
    lr: float = 1e-7  # the official README's OPT-13B example (also its RoBERTa-large choice)
    rank: int = 2  # r, the rank of U·Vᵀ
    interval: int = 50  # ν, steps between redraws of V
    momentum: float = 0.0  # β of LOZO-M (0: plain LOZO)
    noises: ClassVar[tuple[str, ...]] = ("gaussian",)  # U·Vᵀ is not elementwise ±1: no Rademacher

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "rank": (self.rank >= 1, "rank >= 1"),
            "interval": (self.interval >= 1, "interval >= 1 (steps between redraws of V)"),
            "momentum": (0.0 <= self.momentum < 1.0, "0 <= momentum < 1 (0: LOZO, > 0: LOZO-M)"),
        }


@dataclass
class Matrix:
    """A weight tensor with ndim >= 2, seen as m×n."""

    seg: Segment
    rows: int  # m = shape[0]
    width: int  # n = numel / m
    start: int  # flat index of its element 0


def lowrank_perturbed(
    out: torch.Tensor, x: torch.Tensor, left: torch.Tensor, vt: torch.Tensor, scale: float
) -> None:
    """out ← x + scale·left·Vᵀ in x's dtype, for whole rows of a matrix (x flat, or (..., n) rows).

    One BLAS call (addmm) and the cast: with r inner terms the product costs less than the memory
    pass, and it is not compiled because inductor's dynamic-shape code for a broadcast outer
    product runs ~10× slower than this on CPU."""
    width = vt.shape[1]
    new = torch.addmm(x.reshape(-1, width).float(), left.reshape(-1, vt.shape[0]), vt, alpha=scale)
    out.view(-1, width).copy_(new)


def store_rounded(x: torch.Tensor, new: torch.Tensor, start: int, round_seed: int, sr: bool) -> None:
    """x ← new (fp32, x's shape) rounded to x's dtype; x's first flat index is start."""
    x.copy_(round_to(new, x.dtype, positions(start, x.numel(), x.device), round_seed, sr))


@register
class LOZO(ZOOptimizer):
    """Low-rank ZO (LOZO); with optimizer.momentum > 0, LOZO-M."""

    name = "lozo"
    Config = LOZOConfig

    def __init__(self, model: nn.Module, cfg: LOZOConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.rank, self.interval, self.beta = cfg.rank, cfg.interval, cfg.momentum
        self.matrices: list[Matrix] = []
        vectors: list[Segment] = []
        for s in self.flat.segments:
            if s.param.ndim >= 2:
                m = s.param.shape[0]
                offset = self.flat.buffers[s.group].offset + s.start
                self.matrices.append(Matrix(s, m, s.numel // m, offset))
            else:
                vectors.append(s)
        self._matrix_of = {id(mat.seg.param): k for k, mat in enumerate(self.matrices)}
        self.vector_runs = self.flat.runs(vectors, lambda a, b: a.decays != b.decays)
        self._vector_of = {  # id(param) -> (its run, its offset in the run)
            id(s.param): (j, s.start - run.start)
            for j, run in enumerate(self.vector_runs)
            for s in run.segments
        }
        self.counter = 0  # s, the reference's step counter (runner step t − 1)
        self.v_step = 0  # the s that V was drawn for
        self.V = [self.draw_v(k, 0) for k in range(len(self.matrices))]
        self.started = False  # LOZO-M: N and the vectors' momentum hold a first step
        self.has_old = False  # LOZO-M: V_old was stored
        self.N: list[torch.Tensor] = []  # LOZO-M: m×r per matrix
        self.V_old: list[torch.Tensor] = []
        self.vector_m: list[torch.Tensor] = []  # LOZO-M: one fp32 momentum per run of vectors
        if self.beta > 0.0:
            self.N = [torch.zeros(mat.rows, self.rank, device=mat.seg.param.device) for mat in self.matrices]
            self.V_old = [torch.zeros_like(v) for v in self.V]
            self.vector_m = [
                torch.zeros_like(self.flat.slice(run)[0], dtype=torch.float32) for run in self.vector_runs
            ]

    # ---- noise ---------------------------------------------------------------------------------
    def u_rows(self, k: int, rows: torch.Tensor) -> torch.Tensor:
        """Rows `rows` (int64, any shape) of matrix k's U for the current probe: (*rows.shape, r)."""
        r = self.rank
        base = r * self.matrices[k].start
        idx = base + rows.unsqueeze(-1) * r + torch.arange(r, device=rows.device)
        return noise_at(self.draw)(idx, mix(self.noise_seed(), U_TAG))

    def draw_v(self, k: int, step: int) -> torch.Tensor:
        """Matrix k's V (n×r) as drawn at reference step `step`."""
        mat, r = self.matrices[k], self.rank
        idx = positions(r * mat.start, mat.width * r, mat.seg.param.device)
        return noise_at(self.draw)(idx, mix(self.seed, V_TAG, step)).view(mat.width, r)

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self.counter = step - 1
        drawn_for = self.counter - self.counter % self.interval
        if drawn_for != self.v_step:
            self.V = [self.draw_v(k, drawn_for) for k in range(len(self.matrices))]
            self.v_step = drawn_for

    # ---- perturbation --------------------------------------------------------------------------
    def _chunks(self, mat: Matrix, r0: int, r1: int) -> Iterator[tuple[int, int]]:
        """Rows [r0, r1) in pieces that bound the fp32 transients of a matrix's pass (below a block)."""
        step = max(min(EAGER_PIECE, block_limit(self.d)) // mat.width, 1)
        for a in range(r0, r1, step):
            yield a, min(a + step, r1)

    def _rows(self, k: int, a: int, b: int) -> torch.Tensor:
        return torch.arange(a, b, device=self.matrices[k].seg.param.device)

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        """Matrices at W + scale·U Vᵀ (only the run's rows), vectors at MeZO's x + scale·z."""
        out = torch.empty_like(x)
        for s in run.segments or [self._segment_at(run)]:
            a, b = max(s.start, run.start), min(s.start + s.numel, run.end)  # the part of s in the run
            k = self._matrix_of.get(id(s.param))
            if k is None:
                out[a - run.start : b - run.start] = super().block_weights(
                    x[a - run.start : b - run.start], Run(run.group, a, b, [s]), scale
                )
                continue
            mat = self.matrices[k]
            first = (a - s.start) // mat.width
            for r0, r1 in self._chunks(mat, first, (b - s.start) // mat.width):
                lo, hi = a - run.start + (r0 - first) * mat.width, a - run.start + (r1 - first) * mat.width
                lowrank_perturbed(
                    out[lo:hi], x[lo:hi], self.u_rows(k, self._rows(k, r0, r1)), self.V[k].T, scale
                )
        return out

    def _segment_at(self, run: Run) -> Segment:
        """The matrix a run of whole rows (a chunk of an LM head) belongs to."""
        for mat in self.matrices:
            s = mat.seg
            if s.group == run.group and s.start <= run.start < s.start + s.numel:
                return s
        raise AssertionError(f"no matrix holds the run {run.group}:{run.start}")

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        """Rows `ids` of W + scale·U Vᵀ: U[ids]·Vᵀ added to the looked-up rows."""
        k = self._matrix_of[id(seg.param)]
        out = torch.empty_like(rows)
        lowrank_perturbed(out, rows, self.u_rows(k, ids), self.V[k].T, scale)
        return out

    # ---- update --------------------------------------------------------------------------------
    def update(self, lr: float, beta: float | None) -> None:
        c, s, nu = self.projected_grad, self.counter, self.interval
        sr, wd = self.cfg.stochastic_rounding, self.cfg.weight_decay
        store = self.kernel(store_rounded)
        momentum = self.beta if self.started else 0.0  # the first step sets N = cU, m = cz
        redrawn = s % nu == 0  # V was just redrawn: N is carried into its basis, or restarts without V_old
        n_momentum = 0.0 if redrawn and not self.has_old else momentum  # every step at ν = 1
        for k, mat in enumerate(self.matrices):
            if self.beta > 0.0:
                self._move_n(k, c, n_momentum, carry=redrawn and self.has_old)
            decay = 1.0 - lr * wd if mat.seg.decays else 1.0
            x = self.flat.slice(mat.seg.run())[0]
            for r0, r1 in self._chunks(mat, 0, mat.rows):
                if self.beta > 0.0:
                    left, size = self.N[k][r0:r1], lr
                else:
                    left, size = self.u_rows(k, self._rows(k, r0, r1)), lr * c
                piece = x[r0 * mat.width : r1 * mat.width]
                new = torch.addmm(
                    piece.view(-1, mat.width).float(), left, self.V[k].T, beta=decay, alpha=-size
                )
                store(piece, new.view(-1), mat.start + r0 * mat.width, self.round_seed(1), sr)
        self._update_vectors(lr, c, momentum)
        self.started = True
        if self.beta > 0.0 and nu > 1 and s % nu == nu - 1:
            for old, v in zip(self.V_old, self.V, strict=True):
                old.copy_(v)
            self.has_old = True

    def _move_n(self, k: int, c: float, beta: float, carry: bool) -> None:
        """N ← β N (V_oldᵀV/n if V was just redrawn) + (1−β) c U."""
        u = self.u_rows(k, self._rows(k, 0, self.matrices[k].rows))
        n = self.N[k]
        if carry:
            n.copy_(n @ (self.V_old[k].T @ self.V[k]) / self.matrices[k].width)
        n.mul_(beta).add_(u, alpha=(1.0 - beta) * c)

    def _update_vectors(self, lr: float, c: float, beta: float) -> None:
        """MeZO (LOZO) or MeZO with momentum (LOZO-M) on the biases and norms."""
        sr, noise = self.cfg.stochastic_rounding, self.draw
        seed, rseed = self.step_seed, self.round_seed(1)
        for i, run in enumerate(self.vector_runs):
            x, start = self.flat.slice(run)
            decay = 1.0 - lr * self.cfg.weight_decay if run.segments[0].decays else 1.0
            if self.beta > 0.0:
                seeds = (seed, rseed, self.round_seed(2))
                self.kernel(momentum_step)(x, self.vector_m[i], start, seeds, noise, decay, c, lr, beta, sr)
            else:
                self.kernel(mezo_step)(x, start, seed, noise, rseed, decay, lr * c, sr)

    # ---- alignment and state -------------------------------------------------------------------
    def reference_vector(self, i: int) -> torch.Tensor:
        """LOZO-M: the step it takes (N Vᵀ, the vectors' m); LOZO: this step's direction."""
        if self.beta == 0.0:
            return self.direction(i)
        seg = self.flat.segments[i]
        k = self._matrix_of.get(id(seg.param))
        if k is not None:
            return (self.N[k] @ self.V[k].T).view(seg.param.shape)
        j, offset = self._vector_of[id(seg.param)]
        return self.vector_m[j][offset : offset + seg.numel].view(seg.param.shape)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "V": self.V,
            "v_step": self.v_step,
            "N": self.N,
            "V_old": self.V_old,
            "vector_m": self.vector_m,
            "started": self.started,
            "has_old": self.has_old,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for key in ("V", "N", "V_old", "vector_m"):
            mine, saved = getattr(self, key), state.get(key)
            if saved is None or [t.shape for t in saved] != [t.shape for t in mine]:
                raise ZOError(
                    f"checkpoint's lozo state {key} does not fit this run (was optimizer.rank or "
                    "optimizer.momentum changed?): resume with the same keys, or use a fresh output folder"
                )
        for key in ("V", "N", "V_old", "vector_m"):
            for buf, value in zip(getattr(self, key), state[key], strict=True):
                buf.copy_(value)
        self.v_step, self.started, self.has_old = state["v_step"], state["started"], state["has_old"]
