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
- `lr` is η_mb. η_fb is `lr_full` if set, else `lr_full_ratio` × η_mb (default 10). The authors'
  scripts (amazon-science/mezo_svrg) pair η_fb ∈ {1e-5, 1e-4} with η_mb ∈ {1e-6, 1e-5}, so η_fb is
  10–100× η_mb (doc §6); a ratio keeps that true when a sweep moves optimizer.lr, where a fixed
  η_fb would not. Weight decay is MeZO's, at the step's own lr.
- Logged loss: the mean of the two probes at x (at an anchor, on the whole training set); the
  snapshot's probes are not the loss of the current weights. `projected_grad` is c at anchors and
  c_B(x) otherwise.

Annealing (`anneal: true`; the authors' `training_step_MeZO_SVRG`). At the start of a step that
begins an epoch, once more than 4 epochs are done, both lrs are divided by `anneal_factor` (5) if
the mean loss over the last epoch (leading) exceeds 1.05 × the mean over the epoch two before it
(trailing: the reference's l[−E:] against l[−3E:−2E], E steps an epoch), with floors
`anneal_min_lr_full` (1e-5, η_fb) and `anneal_min_lr` (1e-6, η_mb). After k such events

    η = max(η₀ · factor^−k, min(η₀, floor))        (η₀: the lr the runner passes, or η_fb from it)

so only k and the loss window are state (factor^−k underflows to 0 where factor^k would overflow).
"Exceeds" is leading > 1.05 · trailing: the reference's ratio v1/v2 > 1.05 for positive losses,
without dividing by a zero one. What is inferred for this runner:
- An epoch is `anneal_every` steps; 0 (the default) is one pass over the training set,
  ceil(examples / train.batch_size) steps, the reference's batches per epoch (the runner tells the
  optimizer the size: `set_data`). Epochs count from step 1: the checks are at the starts of steps
  5E + 1, 6E + 1, … The runner's batches run on across epoch ends when the size does not divide.
- The loss of a step is its logged loss (above): the reference records each step's loss on the
  data it used (the full set at anchors) after its update, which would cost a forward; ours is
  the same quantity before the update, from the probes already run, so a replay from the
  trajectory log re-derives the annealing exactly.
- A floor never raises an lr: one already below its floor stays (the reference's max() would
  lift it). At the default lrs (η_mb 1e-6, η_fb 1e-5) both already sit on their floors, so
  annealing changes nothing there, as in the authors' runs at those lrs; it acts at larger ones
  (their η_fb 1e-4 goes to 2e-5, then 1e-5). The floors are keys for other scales.
- The logged `lr` is the annealed η_mb (`logged_lr`).
State: k, the completed epochs, the current epoch's loss sum and the last three epoch means, in
the state_dict (floats, exact in the checkpoint's JSON).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from zo import ZOError
from zo.flat import Run, Segment
from zo.optim import register
from zo.optim.base import OptimConfig, Probe, ZOOptimizer
from zo.optim.mezo import mezo_step

ANCHOR = (Probe(+1.0, data="full"), Probe(-1.0, data="full"))
CORRECTED = (Probe(+1.0), Probe(-1.0), Probe(+1.0, at="snapshot"), Probe(-1.0, at="snapshot"))
ANNEAL_RATIO = 1.05  # anneal when the leading epoch's mean loss exceeds this × the trailing one's
ANNEAL_AFTER = 4  # epochs done before the first check (the reference: more than 2w = 4E losses)


@dataclass
class MeZOSVRGConfig(OptimConfig):
    lr_full: float | None = None  # η_fb, the anchor steps' lr; None: lr_full_ratio × lr
    lr_full_ratio: float = 10.0  # η_fb / η_mb when lr_full is None (the authors: 10–100)
    anchor_every: int = 2  # q: one full-batch anchor step every q steps
    anneal: bool = False  # the authors' annealing at epoch starts (module docstring)
    anneal_factor: float = 5.0  # both lrs are divided by this when the loss rose
    anneal_every: int = 0  # steps an epoch; 0: ceil(training examples / batch size)
    anneal_min_lr: float = 1e-6  # floor of η_mb
    anneal_min_lr_full: float = 1e-5  # floor of η_fb

    def checks(self) -> dict[str, tuple[bool, str]]:
        return super().checks() | {
            "lr_full": (
                self.lr_full is None or self.lr_full >= 0,
                "lr_full >= 0, or null (lr_full_ratio × lr)",
            ),
            "lr_full_ratio": (self.lr_full_ratio > 0, "lr_full_ratio > 0"),
            "anchor_every": (
                self.anchor_every >= 1,
                "anchor_every >= 1 (1: every step is a full-batch step)",
            ),
            "anneal_factor": (self.anneal_factor >= 1, "anneal_factor >= 1"),
            "anneal_every": (self.anneal_every >= 0, "anneal_every >= 0 (0: one epoch of the training set)"),
            "anneal_min_lr": (self.anneal_min_lr >= 0, "anneal_min_lr >= 0"),
            "anneal_min_lr_full": (self.anneal_min_lr_full >= 0, "anneal_min_lr_full >= 0"),
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
        self.epoch_steps = cfg.anneal_every or None  # E; None until `set_data` says (anneal_every = 0)
        self.anneals = 0  # k: how many times both lrs were divided
        self.epochs_done = 0
        self.epoch_sum = 0.0  # the logged losses of the current epoch's steps so far
        self.epoch_means: list[float] = []  # the last three completed epochs' mean losses

    def set_data(self, examples: int, batch_size: int) -> None:
        if self.cfg.anneal_every == 0 and examples > 0:
            self.epoch_steps = math.ceil(examples / batch_size)
        self._epoch_known()

    def _epoch_known(self) -> None:
        if self.cfg.anneal and self.epoch_steps is None:
            raise ZOError(
                "optimizer.anneal counts epochs of the training set, and this run has none (the "
                "quadratic): set optimizer.anneal_every to the steps between checks"
            )

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self.t = step
        if self.cfg.anneal:
            self._epoch_start(step - 1)

    # ---- annealing ------------------------------------------------------------------------------
    def _epoch_start(self, done: int) -> None:
        """With `done` steps done: if that ends an epoch, close it, and anneal if the loss rose."""
        self._epoch_known()
        e = self.epoch_steps
        assert e is not None
        if done % e != 0 or done // e <= self.epochs_done:  # mid-epoch, or this epoch already closed
            return
        self.epochs_done = done // e
        self.epoch_means = [*self.epoch_means, self.epoch_sum / e][-3:]
        self.epoch_sum = 0.0
        if self.epochs_done > ANNEAL_AFTER and len(self.epoch_means) == 3:
            leading, trailing = self.epoch_means[-1], self.epoch_means[0]
            if leading > ANNEAL_RATIO * trailing:
                self.anneals += 1

    def _annealed(self, lr: float, floor: float) -> float:
        """lr after k anneals: divided by factor^k, but not below floor (nor raised to it)."""
        if self.anneals == 0:
            return lr
        return max(lr * self.cfg.anneal_factor**-self.anneals, min(lr, floor))

    def lrs(self, lr: float) -> tuple[float, float]:
        """(η_mb, η_fb) of this step, given the runner's lr (η_mb before annealing)."""
        c = self.cfg
        full = c.lr_full if c.lr_full is not None else c.lr_full_ratio * lr
        return self._annealed(lr, c.anneal_min_lr), self._annealed(full, c.anneal_min_lr_full)

    def logged_lr(self, lr: float) -> float:
        return self.lrs(lr)[0]

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
        if self.cfg.anneal:
            self.epoch_sum += self.logged_loss(losses)
        return self.note_estimate((losses[0] - losses[1]) / two_eps)

    def update(self, lr: float, beta: float | None) -> None:
        """Anchor: x̃ ← x, then x ← x − η_fb c z̃. Otherwise x ← x − η_mb (c_B(x) − c_B(x̃)) z − η_mb c z̃:
        MeZO's kernel either way, z̃ as its second direction."""
        p = self.projected_grad
        lr, lr_full = self.lrs(lr)
        if self.anchoring:
            for snap, buffer in zip(self.snapshot, self.flat.buffers, strict=True):
                snap.copy_(buffer.data)
            self.anchor_step, self.anchor_seed, self.anchor_grad = self.t, self.step_seed, p
            lr, move, anchor = lr_full, lr_full * p, ()
        else:
            move, anchor = lr * (p - self.snapshot_grad), ((self.anchor_seed, lr * self.anchor_grad),)
        step, noise, sr = self.kernel(mezo_step), self.draw, self.cfg.stochastic_rounding
        for x, _, start, decay in self.slices(lr):
            step(x, start, self.step_seed, noise, self.round_seed(1), decay, move, sr, anchor)

    def state_dict(self) -> dict:
        anchor = {
            "anchor_step": self.anchor_step,
            "anchor_seed": self.anchor_seed,
            "anchor_grad": self.anchor_grad,
        }
        anneal = {
            "anneals": self.anneals,
            "epochs_done": self.epochs_done,
            "epoch_sum": self.epoch_sum,
            "epoch_means": list(self.epoch_means),
        }
        return {**super().state_dict(), "snapshot": self.snapshot} | anchor | anneal

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)  # name, d and layout, hence the buffers' shapes
        for mine, saved in zip(self.snapshot, state["snapshot"], strict=True):
            mine.copy_(saved)
        self.anchor_step, self.anchor_seed = state["anchor_step"], state["anchor_seed"]
        self.anchor_grad = state["anchor_grad"]
        # A checkpoint from before annealing existed holds none of it: nothing was annealed.
        self.anneals, self.epochs_done = int(state.get("anneals", 0)), int(state.get("epochs_done", 0))
        self.epoch_sum = float(state.get("epoch_sum", 0.0))
        self.epoch_means = [float(v) for v in state.get("epoch_means", [])]
