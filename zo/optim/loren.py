"""LOREN (Seung, Lee, Ko, AAAI-26, arXiv 2511.07971): a learned rank-1 search distribution per tensor.

Each parameter tensor is a block W ∈ R^{m×n} (m = shape[0], n = the rest; a vector is m = 1, n = d)
with its own a ∈ R^n (drawn N(0, I) once). With ā = 1_m aᵀ (every row aᵀ), s = m‖a‖²,
c = √(λ+s), r = √λ and γ = (r+c)/(s c), the search direction is

    z = S u,  S = I − γ āāᵀ,  u ~ N(0, I),  so  E[z zᵀ] = Σ = I − āāᵀ/(λ+s):

in matrix form, t = Σ_ij U_ij a_j and every row of U loses γ·t·aᵀ. A step takes K one-sided probes
f_k = f(x + ε z_k) (no forward at x), RLOO weights w_k = f_k − f̄, and per probe d_k = c_k z_k with
c_k = w_k/((K−1)ε) (so Σ_k d_k = ĝ ≈ Σ∇f). In the reference order (`sequential`) probe k then moves
a matrix's heavy-ball momentum M ← β₁M + d_k and x ← (1−η·wd)x − ηM (a vector: x ← (1−η·wd)x − η d_k),
and a ← (1−η_cov·wd)a − η_cov ∇a by the score of the search distribution; z_k in the update is formed
with the *current* a, so probes after the first see an a already moved. `sequential=false` sums the
d_k and the a-gradients and applies one momentum and one a update.

How this is cheap:
- t needs the whole tensor's u before any row of z exists (a chunked head, embedding rows). A
  read-only pass per tensor and probe that only draws noise caches the column sums Σ_i U_ij (n
  floats): t = colsum·a for whichever a, and ∇a = Σ over rows of the score is
  [t·colsum − m a (1 + (r+c)(t²−s)/(s c))]/c times w_k ε²/(K−1), so the update never redraws u for it.
- The K sequential probe updates are linear in x, M and the u_k, so they collapse into one pass:
  x_K = δ^K x₀ − ηB M₀ − η Σ_j e_j d_j and M_K = β^K M₀ + Σ_j β^{K−j} d_j, with δ the decay factor,
  e_j = Σ_{k≥j} δ^{K−k} β^{k−j} and B = Σ_k δ^{K−k} β^k (a vector is the same with β = 0). Each d_j is
  c_j u_j minus a tiled rank-1 term, so per tensor one fused kernel draws the K noises and adds one
  n-vector per row (the rank-1 terms, summed along the a-trajectory by `covariance_pass`). x and M
  are read and written once a step, not K times, and rounded once (the reference rounds K times).
- Kernels run per tensor, not per flat buffer: the rank-1 term differs per tensor, and reading it
  inside a buffer-wide kernel takes a gather that de-vectorises the noise draw (9× slower on CPU,
  measured). A step is K·T colsum passes, K·T perturbations and T updates for T tensors, each one
  compiled loop; noise is drawn 3K times a step (MeZO: 3 per 2 forwards), and no full-size z exists.

Choices where the paper/reference leaves one (see zo-methods.md §1):
- lr default 1e-7, not main.py's generic 2e-3: with β₁ = 0.9 applied K times a step, a matrix moves
  by η/(1−β₁) = 10η per unit of ĝ in steady state, so 1e-7 is MeZO's default step (1e-6) on the
  matrices; vectors (norms, biases) move η·ĝ. Sweep it.
- Momentum lives in one buffer beside each flat buffer (1P); its vector slices stay 0 (vectors get
  none). A model without matrices (the quadratic) allocates none.
- Weight decay, where the base applies it (tensors with ≥ 2 dims), uses the same coefficient on a
  (quirk iii); a of a vector does not decay, like its x.
- `ref_vector_quirk`: the reference adds the *sum* of a vector's a-gradient to every entry of a;
  off (default) the gradient is per entry (the chain rule). The K sequential updates use the closed
  form above, equal to the reference's loop up to float rounding.
- projected_grad logs ‖(c_k)_k‖, the RLOO coefficients' size: 0 exactly when every probe saw the
  same loss (what the stall warning watches).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from zo import ZOError
from zo.flat import Run, Segment, block_limit
from zo.noise import EAGER_PIECE, mix, noise_at, positions
from zo.optim import register
from zo.optim.base import OptimConfig, Probe, ZOOptimizer
from zo.rounding import round_to

A_SALT = 0x10AE7  # seed salt of a's initial N(0, I) draw (no step uses it)

Terms = tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]


@dataclass
class LorenConfig(OptimConfig):
    lr: float = 1e-7  # see the module docstring: 10η is MeZO's step on matrices
    queries: int = 10  # K one-sided probes a step
    damping: float = 0.1  # λ of the curvature model I + āāᵀ/λ
    lr_cov: float = 1e-3  # η_cov, step of a
    momentum: float = 0.9  # β₁, heavy-ball momentum of the matrices (fixed, not scheduled)
    sequential: bool = True  # the reference's order: momentum and a move after every probe
    ref_vector_quirk: bool = False  # vectors: the reference's scalar a-gradient on every entry
    noises: ClassVar[tuple[str, ...]] = ("gaussian",)  # z = S u is not elementwise: no Rademacher

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "queries": (self.queries >= 2, "queries >= 2 (the leave-one-out baseline needs two probes)"),
            "damping": (self.damping > 0, "damping > 0"),
            "lr_cov": (self.lr_cov >= 0, "lr_cov >= 0"),
            "momentum": (0.0 <= self.momentum < 1.0, "0 <= momentum < 1"),
        }


def shape_terms(a: torch.Tensor, rows: int, damping: float) -> Terms:
    """(s, c, r, γ) of a block with `rows` rows: s = m‖a‖², c = √(λ+s), r = √λ, γ = (r+c)/(s c)."""
    s = rows * a.dot(a)
    c = torch.sqrt(damping + s)
    r = math.sqrt(damping)
    return s, c, r, (r + c) / (s * c)


def probe_terms(
    like: torch.Tensor, start: int, seed: int, noise: str, a: torch.Tensor, damping: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_i U_ij, γ t) of a probe's noise over a (rows, n) block at flat index start, under a.

    A pass that only draws noise (`like` gives the shape and device): the column sums are what t
    and the block's score need under any later a; γ t is what this probe's rows of z need."""
    idx = positions(start, like.numel(), like.device).view(like.shape)
    colsum = noise_at(noise)(idx, seed).sum(0)
    return colsum, shape_terms(a, like.shape[0], damping)[3] * colsum.dot(a)


def rank1_z(idx: torch.Tensor, seed: int, noise: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """z = u − g·a along each row (g = γ t): rows of S u, given the whole block's t (u of draw `noise`)."""
    return noise_at(noise)(idx, seed) - g * a


def perturb_into(
    out: torch.Tensor,
    x: torch.Tensor,
    start: int,
    seed: int,
    noise: str,
    a: torch.Tensor,
    g: torch.Tensor,
    scale: float,
) -> None:
    """out ← x + scale·z over a (rows, n) piece of a block whose first element is at flat index start."""
    idx = positions(start, x.numel(), x.device).view(x.shape)
    out.copy_((x.float() + scale * rank1_z(idx, seed, noise, a, g)).to(out.dtype))


def rows_at(
    rows: torch.Tensor,
    ids: torch.Tensor,
    start: int,
    seed: int,
    noise: str,
    a: torch.Tensor,
    g: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Rows `ids` of an embedding at x + scale·z, given its looked-up rows (indices as in perturb_into)."""
    width = rows.shape[-1]
    idx = start + ids.unsqueeze(-1) * width + torch.arange(width, device=rows.device)
    return (rows.float() + scale * rank1_z(idx, seed, noise, a, g)).to(rows.dtype)


def covariance_pass(
    a: torch.Tensor,
    colsums: torch.Tensor,
    rows: int,
    damping: float,
    coefs: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]],
    lr_cov: float,
    decay: float,
    sequential: bool,
    scalar_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's a over the K probes, and the rank-1 parts of its x and M updates.

    coefs = (χ, μ, ω): x loses Σ χ_k z_k, M gains Σ μ_k z_k, ω_k = w_k ε²/(K−1) scales the score.
    z_k = u_k − γ_k t_k ā_k, so the returned rx = Σ χ_k γ_k t_k a_k and rm = −Σ μ_k γ_k t_k a_k are
    what one row of x and of M gets on top of the u_k terms. Returns (new a, rx, rm).
    """
    chi, mu, omega = coefs
    a_k, total = a, torch.zeros_like(a)
    rx, rm = torch.zeros_like(a), torch.zeros_like(a)
    for k in range(len(omega)):
        s, c, r, gamma = shape_terms(a_k, rows, damping)
        t = colsums[k].dot(a_k)
        g = gamma * t
        rx = rx + (chi[k] * g) * a_k
        rm = rm - (mu[k] * g) * a_k
        grad = omega[k] * (t * colsums[k] - rows * (1.0 + (r + c) * (t * t - s) / (s * c)) * a_k) / c
        if scalar_grad:
            grad = grad.sum().expand_as(a_k)
        if sequential:
            a_k = decay * a_k - lr_cov * grad
        else:
            total = total + grad
    return (a_k if sequential else decay * a - lr_cov * total), rx, rm


def loren_step(
    x: torch.Tensor,
    m: torch.Tensor | None,
    start: int,
    seeds: tuple[int, ...],
    noise: str,
    coefs: tuple[tuple[float, ...], tuple[float, ...]],
    keep: tuple[float, float, float],
    rx: torch.Tensor,
    rm: torch.Tensor,
    round_seeds: tuple[int, int],
    sr: bool,
) -> None:
    """x ← p·x + q·M − Σ χ_k u_k + rx, M ← r·M + Σ μ_k u_k + rm over a (rows, n) block, in one pass
    (keep = (p, q, r); rx, rm are per-row n-vectors; m is None for vectors, which ignore q, r, rm)."""
    idx = positions(start, x.numel(), x.device).view(x.shape)
    p, q, r = keep
    new_x = p * x.float() + rx
    new_m = None
    if m is not None:
        m_old = m.float()
        new_x = new_x + q * m_old
        new_m = r * m_old + rm
    for seed, cx, cm in zip(seeds, *coefs, strict=True):
        u = noise_at(noise)(idx, seed)
        new_x = new_x - cx * u
        if new_m is not None:
            new_m = new_m + cm * u
    x.copy_(round_to(new_x, x.dtype, idx, round_seeds[0], sr))
    if m is not None:
        m.copy_(round_to(new_m, m.dtype, idx, round_seeds[1], sr))


def update_plan(
    coef: Sequence[float], lr: float, decay: float, beta: float, sequential: bool
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, float, float]]:
    """(χ, μ, (p, q, r)) of `loren_step` for probe coefficients c_k (β = 0: a vector, no momentum).

    Sequential: x_K = δ^K x₀ − ηB M₀ − η Σ_j e_j d_j, M_K = β^K M₀ + Σ_j β^{K−j} d_j (module docstring).
    """
    K = len(coef)
    if not sequential:
        return tuple(lr * c for c in coef), tuple(coef), (decay, -lr * beta, beta)
    e = [sum(decay ** (K - 1 - k) * beta ** (k - j) for k in range(j, K)) for j in range(K)]
    chi = tuple(lr * e[j] * coef[j] for j in range(K))
    mu = tuple(beta ** (K - 1 - j) * coef[j] for j in range(K))
    hold = sum(decay ** (K - 1 - k) * beta ** (k + 1) for k in range(K))
    return chi, mu, (decay**K, -lr * hold, beta**K)


@register
class Loren(ZOOptimizer):
    name = "loren"
    Config = LorenConfig
    supports_queries = True

    def __init__(self, model: torch.nn.Module, cfg: LorenConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        K = cfg.queries
        self._probes = tuple(Probe(1.0, k) for k in range(K))
        segments = self.flat.segments
        self._index = {id(s.param): i for i, s in enumerate(segments)}
        self._matrix = [s.param.ndim >= 2 for s in segments]
        self._rows = [s.param.shape[0] if s.param.ndim >= 2 else 1 for s in segments]
        self._cols = [s.numel // r for s, r in zip(segments, self._rows, strict=True)]
        device = [s.param.device for s in segments]
        self.a = [
            noise_at(self.draw)(positions(0, n, dev), mix(seed, A_SALT, i))
            for i, (n, dev) in enumerate(zip(self._cols, device, strict=True))
        ]
        self.momentum = self.new_momentum() if any(self._matrix) else None
        # Per tensor and probe: Σ_i U_ij and γ t under this step's a, drawn once a step on first use
        # (a key of _g says its column sums are drawn).
        self._colsums = [torch.empty(K, n, device=dev) for n, dev in zip(self._cols, device, strict=True)]
        self._g: dict[tuple[int, int], torch.Tensor] = {}
        self._coef = [0.0] * K
        self._starts: dict[int, list[int]] = {}  # buffer -> its segments' starts (to find a head chunk's)
        self._at: dict[int, list[int]] = {}
        for i, s in enumerate(segments):
            self._starts.setdefault(s.group, []).append(s.start)
            self._at.setdefault(s.group, []).append(i)

    def probes(self) -> Sequence[Probe]:
        return self._probes

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self._g.clear()

    # ---- directions -------------------------------------------------------------------------------
    def _block(self, i: int) -> tuple[torch.Tensor, int]:
        """Tensor i's live weights as (rows, n), and the flat index of its first element."""
        seg = self.flat.segments[i]
        x, start = self.flat.slice(seg.run())
        return x.view(self._rows[i], self._cols[i]), start

    def _draw(self, k: int, i: int) -> torch.Tensor:
        """γ t of probe k over tensor i (its z is u − γ t ā), drawing the column sums if not yet drawn."""
        if (k, i) not in self._g:
            like, start = self._block(i)
            colsum, self._g[k, i] = self.kernel(probe_terms)(
                like, start, self.noise_seed(k), self.draw, self.a[i], self.cfg.damping
            )
            self._colsums[i][k] = colsum
        return self._g[k, i]

    def _pieces_of(self, i: int) -> list[tuple[int, int]]:
        """Tensor i's rows in pieces of at most EAGER_PIECE weights (and a block's): the update kernel's
        fp32 intermediates (compiled too: inductor keeps the new x and M whole) stay that size."""
        rows, step = self._rows[i], max(min(EAGER_PIECE, block_limit(self.d)) // self._cols[i], 1)
        return [(a, min(a + step, rows)) for a in range(0, rows, step)]

    def _rank1(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, γ t) of tensor i for the current probe."""
        return self.a[i], self._draw(self.probe.k, i)

    def _pieces(self, run: Run) -> list[tuple[int, int, int]]:
        """(tensor, first row, rows) of each piece of run: whole tensors, or rows of one (a head chunk)."""
        if run.segments:
            return [(i, 0, self._rows[i]) for i in (self._index[id(s.param)] for s in run.segments)]
        i = self._at[run.group][bisect.bisect_right(self._starts[run.group], run.start) - 1]
        n = self._cols[i]
        return [(i, (run.start - self.flat.segments[i].start) // n, (run.end - run.start) // n)]

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        out = torch.empty_like(x)
        start, seed = self.flat.slice(run)[1], self.noise_seed()
        fill = self.kernel(perturb_into)
        for i, row, rows in self._pieces(run):
            n = self._cols[i]
            lo = self.flat.segments[i].start + row * n - run.start
            piece = slice(lo, lo + rows * n)
            a, g = self._rank1(i)
            fill(out[piece].view(rows, n), x[piece].view(rows, n), start + lo, seed, self.draw, a, g, scale)
        return out

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        i = self._index[id(seg.param)]
        a, g = self._rank1(i)
        start = self.flat.slice(seg.run())[1]
        return self.kernel(rows_at)(rows, ids, start, self.noise_seed(), self.draw, a, g, scale)

    # ---- estimate and update ----------------------------------------------------------------------
    def estimate(self, losses: Sequence[float]) -> float:
        """RLOO: c_k = (f_k − f̄)/((K−1)ε), so ĝ = Σ c_k z_k; returns ‖c‖."""
        self.check_finite(losses)
        mean = sum(losses) / len(losses)
        self._coef = [(f - mean) / ((len(losses) - 1) * self.cfg.eps) for f in losses]
        return self.note_estimate(math.sqrt(sum(c * c for c in self._coef)))

    def update(self, lr: float, beta: float | None) -> None:
        cfg = self.cfg
        K = len(self._probes)
        seeds = tuple(self.noise_seed(k) for k in range(K))
        rounds = (self.round_seed(1), self.round_seed(2))
        omega = tuple(c * cfg.eps**3 for c in self._coef)  # w_k ε²/(K−1)
        cov, step = self.kernel(covariance_pass), self.kernel(loren_step)
        plans: dict[tuple[bool, bool], tuple] = {}
        for i, seg in enumerate(self.flat.segments):
            matrix, decays = self._matrix[i], seg.decays
            if (matrix, decays) not in plans:
                decay = 1.0 - lr * cfg.weight_decay if decays else 1.0
                beta_1 = cfg.momentum if matrix else 0.0
                plans[matrix, decays] = update_plan(self._coef, lr, decay, beta_1, cfg.sequential)
            chi, mu, keep = plans[matrix, decays]
            for k in range(K):
                self._draw(k, i)  # with a still this step's
            a_decay = 1.0 - cfg.lr_cov * cfg.weight_decay if decays else 1.0
            quirk = cfg.ref_vector_quirk and seg.param.ndim < 2
            self.a[i], rx, rm = cov(
                self.a[i], self._colsums[i], self._rows[i], cfg.damping, (chi, mu, omega),
                cfg.lr_cov, a_decay, cfg.sequential, quirk,
            )  # fmt: skip
            x, start = self._block(i)
            m = self._momentum_slice(seg.run()).view_as(x) if matrix else None
            n = self._cols[i]
            for a, b in self._pieces_of(i):  # a whole embedding in one call held 3 fp32 copies of it
                step(x[a:b], None if m is None else m[a:b], start + a * n, seeds, self.draw, (chi, mu),
                     keep, rx, rm, rounds, cfg.stochastic_rounding)  # fmt: skip
        self._g.clear()  # γ t belonged to the old a: a later `direction` draws again, under the new one

    # ---- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "a": self.a}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        saved = state.get("a") or []
        if [t.shape for t in saved] != [t.shape for t in self.a]:
            raise ZOError(
                "checkpoint's LOREN vectors a do not match this model's tensors: "
                "use a fresh output folder or force=true"
            )
        self.a = [
            value.to(mine.device, torch.float32).clone() for mine, value in zip(self.a, saved, strict=True)
        ]
