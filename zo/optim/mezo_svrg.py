"""MeZO-SVRG (Gautam et al., ICML 2024), the paper's form: minibatch steps corrected by a full-batch anchor.

Every `anchor_every` (q) steps, starting with the first, an *anchor* step estimates the gradient on
the whole training set along its own z̃ and moves from there:

    c = (F(x + εz̃) − F(x − εz̃)) / 2ε,   G = c·z̃,   x̃ ← x (a real copy),   x ← x − η_fb G

The steps in between use the batch B and a fresh z, both at x and at the snapshot x̃:

    x ← x − η_mb [(c_B(x) − c_B(x̃))·z + G]          (c_B(x), c_B(x̃): two-point estimates along the same z)

The snapshot is one parameter-sized buffer in the weights' dtype, copied bitwise. G is *not*
stored (the doc's table counts it as a second buffer): with counter-based noise it is the anchor's
z̃ regenerated from the anchor step's seed, times the scalar c. That trades one parameter-sized
buffer for one extra noise draw inside each minibatch update (MeZO's kernel with z̃ as a second
direction), which fuses into the same pass.

Choices the method leaves open:
- The live weights never serve as the snapshot (the LOREN repo's copy of references does that,
  which makes c_B(x) − c_B(x̃) zero); snapshot probes start from x̃ in every block, head chunk and
  embedding row.
- `lr` is η_mb and `lr_full` is η_fb (the YAML makes it follow `lr` unless set, as the LOREN README's
  η_fb = --lr); weight decay is MeZO's, at the step's own lr.
- Logged loss: the mean of the two probes at x (at an anchor, on the whole training set); the
  snapshot's probes are not the loss of the current weights. `projected_grad` is c at anchors and
  c_B(x) otherwise.
- The LOREN repo's annealing (divide both lrs by 5 at epoch ends when the loss ratio exceeds 1.05)
  is left out: it needs epoch boundaries and a loss history the optimizer does not see, and the
  runner logs the configured lr, which annealing would make wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zo.flat import Run, Segment
from zo.optim import register
from zo.optim.base import OptimConfig, Probe, ZOOptimizer
from zo.optim.mezo import mezo_step

ANCHOR = (Probe(+1.0, data="full"), Probe(-1.0, data="full"))
CORRECTED = (Probe(+1.0), Probe(-1.0), Probe(+1.0, at="snapshot"), Probe(-1.0, at="snapshot"))


@dataclass
class MeZOSVRGConfig(OptimConfig):
    lr_full: float = 1e-6  # η_fb, the anchor steps' lr (conf/optimizer/mezo_svrg.yaml: same as lr)
    anchor_every: int = 2  # q: one full-batch anchor step every q steps

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "lr_full": (self.lr_full >= 0, "lr_full >= 0"),
            "anchor_every": (
                self.anchor_every >= 1,
                "anchor_every >= 1 (1: every step is a full-batch step)",
            ),
        }


@register
class MeZOSVRG(ZOOptimizer):
    name = "mezo_svrg"
    Config = MeZOSVRGConfig

    def __init__(self, model: torch.nn.Module, cfg: MeZOSVRGConfig, seed: int) -> None:
        super().__init__(model, cfg, seed)
        self.snapshot = [b.data.clone() for b in self.flat.buffers]  # x̃
        self.anchor_step = 0  # the last anchor step (0: none yet, so the next step is one)
        self.anchor_seed = 0  # its noise seed, which regenerates z̃
        self.anchor_grad = 0.0  # c, so G = c·z̃
        self.snapshot_grad = 0.0  # c_B(x̃) of the current step
        self.t = 0

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self.t = step

    @property
    def anchoring(self) -> bool:
        """Whether the current step is a full-batch anchor: the first, then every q-th."""
        return self.anchor_step == 0 or self.t - self.anchor_step >= self.cfg.anchor_every

    def probes(self) -> tuple[Probe, ...]:
        return ANCHOR if self.anchoring else CORRECTED

    def logged_loss(self, losses: Sequence[float]) -> float:
        return (losses[0] + losses[1]) / 2.0

    def base_weights(self, run: Run) -> torch.Tensor:
        if self.probe.at == "snapshot":
            return self.snapshot[run.group][run.start : run.end]
        return super().base_weights(run)

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        if self.probe.at == "snapshot":  # the lookup's output holds the live rows: look up x̃'s instead
            rows = self.base_weights(seg.run()).view(seg.param.shape)[ids]
        return super().embedding_rows(rows, ids, seg, scale)

    def estimate(self, losses: Sequence[float]) -> float:
        """c (anchor) or c_B(x) (losses in `probes()` order); c_B(x̃) is kept for the update."""
        self.check_finite(losses)
        two_eps = 2.0 * self.cfg.eps
        self.snapshot_grad = 0.0 if self.anchoring else (losses[2] - losses[3]) / two_eps
        return self.note_estimate((losses[0] - losses[1]) / two_eps)

    def update(self, lr: float, beta: float | None) -> None:
        """Anchor: x̃ ← x, then x ← x − η_fb c z̃. Otherwise x ← x − η_mb (c_B(x) − c_B(x̃)) z − η_mb c z̃:
        MeZO's kernel either way, z̃ as its second direction."""
        p = self.projected_grad
        if self.anchoring:
            for snap, buffer in zip(self.snapshot, self.flat.buffers, strict=True):
                snap.copy_(buffer.data)
            self.anchor_step, self.anchor_seed, self.anchor_grad = self.t, self.step_seed, p
            lr, move, anchor = self.cfg.lr_full, self.cfg.lr_full * p, ()
        else:
            move, anchor = lr * (p - self.snapshot_grad), ((self.anchor_seed, lr * self.anchor_grad),)
        step, noise, sr = self.kernel(mezo_step), self.cfg.noise, self.cfg.stochastic_rounding
        for x, _, start, decay in self.slices(lr):
            step(x, start, self.step_seed, noise, self.round_seed(1), decay, move, sr, anchor)

    def state_dict(self) -> dict:
        anchor = {
            "anchor_step": self.anchor_step,
            "anchor_seed": self.anchor_seed,
            "anchor_grad": self.anchor_grad,
        }
        return {**super().state_dict(), "snapshot": self.snapshot} | anchor

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # name, d and layout, hence the buffers' shapes
        for mine, saved in zip(self.snapshot, state["snapshot"], strict=True):
            mine.copy_(saved)
        self.anchor_step, self.anchor_seed = state["anchor_step"], state["anchor_seed"]
        self.anchor_grad = state["anchor_grad"]
