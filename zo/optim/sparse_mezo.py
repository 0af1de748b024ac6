"""Sparse-MeZO (Liu et al., NeurIPS 2025, arXiv 2402.15751): MeZO on the small-magnitude weights only.

Each parameter tensor is a block b (one `Segment` of zo.flat) with a threshold h_b, set at step 0
from the weights the optimizer is built over: with n_b entries and sparsity s (the fraction frozen),
k_b = max(1, ⌊(1−s)·n_b⌋) and h_b is the k_b-th smallest |W_b| (torch.kthvalue). Every step

    ẑ = [|W| ≤ h]⊙z,   f± = f(x ± εẑ),   p = (f₊ − f₋)/2ε,   x ← x − η (p ẑ + wd·x)   where the mask is 1

with the mask read from the current, unperturbed weights. The mask is never stored: the block
hooks (`block_weights`, `embedding_rows`, a chunked head's rows) compare the live weights with h_b
while they perturb, and the update compares them again before it writes, in the same pass
(`mezo.mezo_step` with its `limit`). `direction()` hands the hook zeros as x: the mask comes from
`self.flat.slice(run)` (the live buffer), never from x. The thresholds are the only state (one
float per tensor), saved in the checkpoint, so a resumed or replayed run uses the same h.
`queries=q` is MeZO's n-SPSA with the one mask for every z_k.

Choices where the paper is silent or loose (doc §8; the official code could not be read):
- |W|, not the pseudo-code's signed W ≤ h (the text says "small magnitude").
- Ties at h_b all count as active (|W| ≤ h_b), so a block may have more than k_b active entries;
  a tensor of equal values (a norm's ones, LoRA's zero B) is wholly active at step 0. Because h
  is fixed, an entry that grows past h_b freezes for good and a frozen entry never moves again
  (so a zero-initialised tensor freezes after its first step, h_b = 0): `threshold_every=N` > 0
  recomputes every h_b from the current weights at the start of steps 1 + N, 1 + 2N, … (before
  that step's probes), which lets the active set follow the weights.
- s = 0 sets h = ∞, so it is MeZO (bitwise: the mask is all ones and never changes). The k-th
  value rule would give h = max|W|, and an entry growing past it would freeze.
- ⌊(1−s)·n⌋ is taken on s as written in decimal (Fraction(repr(s))), so s = 0.8 of 10 entries
  keeps 2, not the 1 that binary 0.19999… would give.
- `scope=matrices` masks only tensors of ≥ 2 dims that are not embedding tables (the ports' rule);
  the rest (biases, norms, embeddings and a tied head) are dense MeZO. `scope=all` (default, the
  paper's "per layer over all weights") masks every tensor.
- Weight decay applies only where the mask is 1 (our choice): a frozen entry does not move at all.
- Rows (R problems as the rows of one (R, d) parameter, base.Rows: bench/synthetic.py): the one
  tensor's threshold becomes an (R, 1) column, h_r the k-th smallest |x_r| of row r with k from d,
  not from R·d, so each row is exactly the tensor it would be on its own (a threshold over the
  whole (R, d) tensor would let the rows' scales decide each other's masks).
- lr defaults to MeZO's 1e-6 (a port's value; unverified): the paper says Sparse-MeZO tolerates
  a larger lr than MeZO, so sweep {1e-6, 2e-6, 5e-6}.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

from zo import ZOError
from zo.flat import Run, Segment
from zo.optim import register
from zo.optim.base import OptimConfig, Rows, index_of
from zo.optim.mezo import MeZO, mezo_step, noise_sum

SCOPES = ("all", "matrices")


@dataclass
class SparseMeZOConfig(OptimConfig):
    sparsity: float = 0.8  # s, the fraction of each tensor frozen (0: MeZO)
    scope: str = "all"  # all | matrices: which tensors are masked (matrices: ≥ 2-D, not embeddings)
    threshold_every: int = 0  # 0: h fixed at step 0; N > 0: recomputed every N steps

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "sparsity": (0.0 <= self.sparsity < 1.0, "0 <= sparsity < 1"),
            "scope": (self.scope in SCOPES, "one of " + ", ".join(SCOPES)),
            "threshold_every": (self.threshold_every >= 0, "threshold_every >= 0 (0: fixed)"),
        }


def masked_at(
    x: torch.Tensor, live: torch.Tensor, idx: torch.Tensor, seed: int, noise: str, scale: float, limit: float
) -> torch.Tensor:
    """x + scale·[|live| ≤ limit]⊙z at flat indices idx, in x's dtype (live: the unperturbed weights;
    z of kind `noise`, drawn as MeZO's update draws it)."""
    z = noise_sum(idx, seed, noise, scale)
    return (x.float() + torch.where(live.float().abs() <= limit, z, 0.0)).to(x.dtype)


def masked_block(
    x: torch.Tensor, live: torch.Tensor, start: int, seed: int, noise: str, scale: float, limit: float
) -> torch.Tensor:
    """`masked_at` over a contiguous stretch of the flat vector starting at index start."""
    return masked_at(x, live, index_of(x, start), seed, noise, scale, limit)


def masked_rows(
    rows: torch.Tensor, ids: torch.Tensor, start: int, seed: int, noise: str, scale: float, limit: float
) -> torch.Tensor:
    """Rows `ids` of a masked-perturbed (V, H) matrix, given its unperturbed rows (indices as in
    `base.perturbed_rows`): the rows are the live weights, so they give the mask too."""
    width = rows.shape[-1]
    idx = start + ids.unsqueeze(-1) * width + torch.arange(width, device=rows.device)
    return masked_at(rows, rows, idx, seed, noise, scale, limit)


def kth_magnitude(w: torch.Tensor, sparsity: float) -> float:
    """h: the k-th smallest |w|, k = max(1, ⌊(1−s)·n⌋) with s read as the decimal it was written as;
    ∞ for s = 0 (nothing frozen, ever)."""
    if sparsity == 0.0:
        return math.inf
    k = max(1, math.floor((1 - Fraction(repr(sparsity))) * w.numel()))
    return float(w.detach().reshape(-1).abs().float().kthvalue(k).values)


def kth_magnitudes(w: torch.Tensor, sparsity: float) -> torch.Tensor | float:
    """`kth_magnitude` of each row of an (R, d) view, as an (R, 1) column (k from d)."""
    if sparsity == 0.0:
        return math.inf
    k = max(1, math.floor((1 - Fraction(repr(sparsity))) * w.shape[-1]))
    return w.detach().abs().float().kthvalue(k, dim=-1, keepdim=True).values


@register
class SparseMeZO(MeZO):
    """MeZO restricted, every step, to the entries with |W| ≤ h of each tensor."""

    name = "sparse_mezo"
    Config = SparseMeZOConfig
    supports_queries = True
    supports_rows = True  # h per row, an (R, 1) column (see the module docstring)

    def __init__(self, model: nn.Module, cfg: SparseMeZOConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        self.masked = [
            cfg.scope == "all" or (s.param.ndim >= 2 and id(s.param) not in tables)
            for s in self.flat.segments
        ]
        self._index = {id(s.param): i for i, s in enumerate(self.flat.segments)}
        self._starts: dict[int, list[int]] = {}  # buffer -> its segments' starts (to find a head chunk's)
        self._at: dict[int, list[int]] = {}
        for i, s in enumerate(self.flat.segments):
            self._starts.setdefault(s.group, []).append(s.start)
            self._at.setdefault(s.group, []).append(i)
        decays = cfg.weight_decay != 0.0
        self._update_parts = self.flat.runs(
            self.flat.segments,
            lambda a, b: self._alone(a) or self._alone(b) or (decays and a.decays != b.decays),
        )
        self.thresholds: list[float | torch.Tensor | None] = []  # rows: one (R, 1) column
        self.set_thresholds()

    def _alone(self, s: Segment) -> bool:
        """A masked tensor is a kernel call of its own (its h); dense neighbours share one."""
        return self.masked[self._index[id(s.param)]]

    def set_thresholds(self) -> None:
        """h of every masked tensor from its current weights in the buffer (None: a dense tensor);
        on a rows model, of each row."""
        if isinstance(self.rows, Rows):
            (s,), (masked,) = self.flat.segments, self.masked  # rows: one (R, d) tensor
            w = self.rows.view(self.flat.slice(s.run())[0])
            self.thresholds = [kth_magnitudes(w, self.cfg.sparsity) if masked else None]
            return
        self.thresholds = [
            kth_magnitude(self.flat.slice(s.run())[0], self.cfg.sparsity) if masked else None
            for s, masked in zip(self.flat.segments, self.masked, strict=True)
        ]

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        every = self.cfg.threshold_every
        if every > 0 and step > 1 and (step - 1) % every == 0:
            self.set_thresholds()

    # ---- perturbation -----------------------------------------------------------------------------
    def _parts(self, run: Run) -> Iterator[tuple[Run, float | None]]:
        """The run in pieces of one h each: a masked tensor alone, neighbouring dense tensors together.
        A run without segments is rows of one tensor (a chunk of an LM head)."""
        if not run.segments:
            i = self._at[run.group][bisect.bisect_right(self._starts[run.group], run.start) - 1]
            yield run, self.thresholds[i]
            return
        for part in self.flat.runs(run.segments, lambda a, b: self._alone(a) or self._alone(b)):
            yield part, self.thresholds[self._index[id(part.segments[0].param)]]

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        """x + scale·[|W| ≤ h]⊙z, W the run's live weights (x is W itself, or zeros for `direction`)."""
        parts = list(self._parts(run))
        if len(parts) == 1 and parts[0][1] is None:
            return super().block_weights(x, run, scale)
        live, start = self.flat.slice(run)
        out = torch.empty_like(x)
        for part, limit in parts:
            lo, hi = part.start - run.start, part.end - run.start
            if limit is None:
                out[lo:hi] = super().block_weights(x[lo:hi], part, scale)
            else:
                view = self.rows.view  # rows: the run is the whole (R, d) tensor
                out[lo:hi] = self.kernel(masked_block)(
                    view(x[lo:hi]),
                    view(live[lo:hi]),
                    start + lo,
                    self.noise_seed(),
                    self.cfg.noise,
                    scale,
                    limit,
                ).reshape(-1)
        return out

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        limit = self.thresholds[self._index[id(seg.param)]]
        if limit is None:
            return super().embedding_rows(rows, ids, seg, scale)
        start = self.flat.slice(seg.run())[1]
        return self.kernel(masked_rows)(rows, ids, start, self.noise_seed(), self.cfg.noise, scale, limit)

    # ---- update and state -------------------------------------------------------------------------
    def update(self, lr: float, beta: float | None) -> None:
        """MeZO's pass per masked tensor (moving and decaying only |W| ≤ h), and per run of dense ones."""
        step, sr, noise = self.kernel(mezo_step), self.cfg.stochastic_rounding, self.cfg.noise
        seed, move, others = self.directions(lr)
        for run in self._update_parts:
            x, start = self.flat.slice(run)
            decay = 1.0 - lr * self.cfg.weight_decay if run.segments[0].decays else 1.0
            limit = self.thresholds[self._index[id(run.segments[0].param)]]
            step(self.rows.view(x), start, seed, noise, self.round_seed(1), decay, move, sr, others, limit)

    def state_dict(self) -> dict:
        cfg = self.cfg
        return {
            **super().state_dict(),
            "sparsity": cfg.sparsity,
            "scope": cfg.scope,
            "thresholds": self.thresholds,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        cfg = self.cfg
        saved = state.get("thresholds") or []
        if (state.get("sparsity"), state.get("scope")) != (cfg.sparsity, cfg.scope) or [
            h is None for h in saved
        ] != [h is None for h in self.thresholds]:
            raise ZOError(
                f"checkpoint's Sparse-MeZO thresholds are for sparsity={state.get('sparsity')} "
                f"scope={state.get('scope')}, this run has sparsity={cfg.sparsity} scope={cfg.scope}: "
                "use the same optimizer.sparsity and optimizer.scope or force=true"
            )
        self.thresholds = [
            None if h is None else h.clone() if isinstance(h, torch.Tensor) else float(h) for h in saved
        ]
