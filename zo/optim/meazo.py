"""MEAZO (arXiv 2605.03869): MeZO divided by the root of one scalar EMA of the squared estimate.

    Δ_k = (f(x+λz_k) − f(x−λz_k)) / 2λ,  k < q;   g = mean_k Δ_k
    v ← β v + (1−β) g²,   v̂ = v / (1 − β^t),   x ← x − η/(√v̂ + ζ) · mean_k Δ_k z_k

For Gaussian z, E[(g z_i)²] = g² for every coordinate, so Adam's per-coordinate v would converge
to this same scalar everywhere: one float of state replaces a parameter-sized buffer, and the
per-coordinate step is ~η. The direction and the update are MeZO's (n-SPSA with q pairs), with η
scaled by 1/(√v̂ + ζ). Weight decay is decoupled from that scaling, AdamW's way:

    x ← x − η_t ĝ − η·wd·x,   η_t = η/(√v̂ + ζ)

so the decay factor is 1 − η·wd, not 1 − η_t·wd: a tiny v̂ (η_t huge) cannot make it negative and
flip the weights' signs.

Choices where the source is silent or wrong (doc §5):
- t in 1 − β^t counts the EMA updates made so far (the page's 1 − β^{t−1} divides by 0 at t = 1).
- `beta` is MEAZO's EMA β, read from `self.cfg.beta` directly. MEAZO is not `uses_beta`: the
  warm-up schedule, which raises the shared key `beta` as a momentum target, does not touch it.
- A zero denominator (v̂ = 0 with ζ = 0, which only happens while every g so far is 0) moves nothing.
- `groups` (INFERRED; the paper's abstract only says "grouped or block-structured"): one scalar v_b
  with its own counter per group. One global probe would give every group the same g, so a group
  needs its own finite difference. The cheap block-coordinate form is used: step t perturbs and
  moves only group b_t = (t − 1) mod B, round-robin. That keeps two forwards a step and makes b_t a
  function of t alone, so resuming needs only the B scalars and counters. The alternative, one
  probe pair per group every step, costs 2B forwards. "layer" groups are the hook blocks of
  `zo.flat.blocks` (a transformer layer, the embedding, the final norm: the same blocks the
  perturbation runs in, whatever the architecture), "tensor" groups are single parameters; a
  tied weight belongs to the first block that holds it. Only the group's weights see λz: the
  block hooks get the others back unperturbed, and no full-size z is drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from zo import ZOError
from zo.flat import Run, Segment, blocks
from zo.optim import register
from zo.optim.base import OptimConfig
from zo.optim.mezo import MeZO

GROUPINGS = ("none", "layer", "tensor")


@dataclass
class MEAZOConfig(OptimConfig):
    lr: float = 1e-5  # per-coordinate step ~η (see conf/optimizer/meazo.yaml)
    beta: float = 0.999  # β of the EMA of g² (the analogue of Adam's β₂)
    zeta: float = 1e-8  # ζ, added to √v̂
    groups: str = "none"  # none | layer | tensor: one scalar v per group (block-coordinate steps)

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "zeta": (self.zeta >= 0, "zeta >= 0"),
            "groups": (self.groups in GROUPINGS, "one of " + ", ".join(GROUPINGS)),
        }


@register
class MEAZO(MeZO):
    name = "meazo"
    Config = MEAZOConfig
    supports_queries = True
    supports_rows = True  # v and its step are (R, 1) columns then; every grouping is one group

    def __init__(self, model: nn.Module, cfg: MEAZOConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.ranges = self._group_ranges(model)  # per group: its [a, b) stretches of the flat vector
        self.v = [0.0] * len(self.ranges)
        self.updates = [0] * len(self.ranges)
        self.group = 0

    def _group_ranges(self, model: nn.Module) -> list[list[tuple[int, int]]]:
        if self.cfg.groups == "none":
            return [[(0, self.d)]]
        if self.cfg.groups == "tensor":
            members = [[s] for s in self.flat.segments]
        else:
            members, seen = [], set()
            for _, params in blocks(model, self.params):
                own = [self.flat.index[id(p)] for p in params if id(p) not in seen]
                seen.update(id(s.param) for s in own)
                if own:
                    members.append(own)
        return [self._flat_ranges(segments) for segments in members]

    def _flat_ranges(self, segments: list[Segment]) -> list[tuple[int, int]]:
        ranges = []
        for run in self.flat.runs(segments, lambda a, b: False):
            start = self.flat.slice(run)[1]
            ranges.append((start, start + run.end - run.start))
        return ranges

    def _inside(self, start: int, n: int) -> list[tuple[int, int]]:
        """The current group's part of the flat stretch [start, start + n), relative to start."""
        end = start + n
        return [
            (max(a, start) - start, min(b, end) - start)
            for a, b in self.ranges[self.group]
            if a < end and b > start
        ]

    # ---- one group perturbed ------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self.group = (step - 1) % len(self.ranges)

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        """MeZO's x + scale·z on the current group's part of the run; the rest as it is."""
        parts = self._inside(self.flat.slice(run)[1], x.numel())
        if parts == [(0, x.numel())]:
            return super().block_weights(x, run, scale)
        if not parts:
            return x  # nothing here moves: the block runs on its own weights, no copy
        out = x.clone()
        for i, j in parts:
            out[i:j] = super().block_weights(x[i:j], Run(run.group, run.start + i, run.start + j), scale)
        return out

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        if not self._inside(self.flat.slice(seg.run())[1], seg.numel):
            return rows
        return super().embedding_rows(rows, ids, seg, scale)

    def slices(self, lr: float) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int, float]]:
        """Only the current group moves (and decays)."""
        for x, m, start, decay in super().slices(lr):
            parts = self._inside(start, x.numel())
            if parts == [(0, x.numel())]:
                yield x, m, start, decay  # all of it (as rows, when the model is R problems)
                continue
            for i, j in parts:
                yield x[i:j], m, start + i, decay

    # ---- update and state ---------------------------------------------------------------------
    def update(self, lr: float, beta: float | None) -> None:
        b, ema = self.group, self.cfg.beta
        self.updates[b] += 1
        self.v[b] = ema * self.v[b] + (1.0 - ema) * self.projected_grad**2
        denom = self.rows.norm(self.v[b] / (1.0 - ema ** self.updates[b])) + self.cfg.zeta  # √v̂ + ζ
        self.move(self.rows.divide(lr, denom), lr)  # η_t for the step, η for the decay

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "groups": self.cfg.groups,
            "v": list(self.v),
            "updates": list(self.updates),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("groups") != self.cfg.groups or len(state["v"]) != len(self.v):
            raise ZOError(
                f"checkpoint's MEAZO state has {len(state.get('v', []))} groups ({state.get('groups')}), "
                f"this run {len(self.v)} ({self.cfg.groups}): use the same optimizer.groups or force=true"
            )
        self.v = [float(v) for v in state["v"]]
        self.updates = [int(n) for n in state["updates"]]
