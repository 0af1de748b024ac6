"""Batched probes (`optimizer.batched_probes=true`): a step's probes side by side in one forward.

    sequential:  for probe in probes:  with opt.perturb(probe): loss_at(probe)
    batched:     with batched.copies(probes): loss_at(probes)     # one loss per probe, one forward

The objective repeats the batch once per probe along dim 0 (`Objective.losses`): copy j is rows
[j·n, (j+1)·n) of the repeated batch, and its loss is the mean over its own examples, exactly as
the sequential probe computes it. What the copies' rows see differs only inside the modules the
optimizer's hooks perturb on entry (blocks, embeddings, chunked heads: `ZOOptimizer._entries`).
Each of them is wrapped here: called outside any copy, it splits its batch-major inputs into the P
copies (every tensor argument whose dim 0 is the batch's n·P; masks, position embeddings and the
like of dim 0 one pass through), calls itself once per copy with that copy's probe in place, and
concatenates the outputs. Inside copy j, the optimizer's ordinary hooks perturb exactly as in
probe j's own forward, and modules nested in the block run unsplit. So:

- a block computes, per copy, the same shapes and the same numbers as the sequential forward;
  what runs between blocks (masks, rotary tables, an unperturbed head) runs once on n·P rows;
- the transient weights are one block's copy at a time (the chunked head: one chunk of rows),
  plus, where copies share a direction (MeZO's ± pair, HiZOO's ±, n-SPSA's pairs), that block's z
  in fp32, drawn once and turned into each copy (`perturbed`); the activations are the repeated
  batch's. `optimizer.probe_chunk=N` bounds the copies per forward.

Probes on other data or at other weights (MeZO-SVRG's full-batch anchors and snapshot probes) and
probes with a backward pass stay sequential, as does a group of one. The rows of a copy must stay
together through every wrapped module: a module that reorders tokens across the batch (an MoE
router's dispatch) cannot be split this way. A transformers cache passed to a block is dropped
when empty (training forwards do not read it) and refused when not (prefix tuning's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from zo import ZOError
from zo.flat import Run, block_limit

if TYPE_CHECKING:
    from zo.optim.base import Probe, ZOOptimizer

SHARE_Z = True  # copies along the same z_k form their weights from one fp32 draw of it per block


def shifted(x: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
    """x + scale·z in x's dtype, z a direction already drawn (fp32)."""
    return (x.float() + scale * z).to(x.dtype)


class BatchedProbes:
    """The optimizer's probes on the step's batch, evaluated side by side (module docstring)."""

    def __init__(self, opt: ZOOptimizer, entries: list[nn.Module]) -> None:
        self.opt = opt
        self.probes: tuple[Probe, ...] | None = None  # the copies of the forward under way
        self.copy: int | None = None  # the copy whose rows run now (None: outside any)
        self._tied: list[dict] = []  # per copy, the optimizer's cache of tied weights
        self._share: Counter = Counter()  # k -> copies along z_k (only those with at least two)
        self._z: dict[tuple[int, int, int, int], list] = {}  # (run, k) -> [z, copies still to use it]
        self._z_numel = 0
        self._limit = block_limit(opt.d)
        seen: set[int] = set()
        self.handles = []
        for module in entries:
            if id(module) not in seen:
                seen.add(id(module))
                self.handles.append(_Split(self, module))

    @staticmethod
    def batchable(probe: Probe) -> bool:
        """Whether a probe can share the batched forward: the step's batch, live weights, no backward."""
        return probe.data == "batch" and probe.at == "live" and not probe.grad

    def losses(self, probes: Sequence[Probe], loss_at: Callable) -> list[float]:
        """The probes' losses in order: the batchable ones in forwards of `probe_chunk` copies (all
        if 0), the rest one by one. `loss_at(tuple of probes)` returns their losses, in that order."""
        opt = self.opt
        side = [i for i, p in enumerate(probes) if self.batchable(p)]
        size = opt.cfg.probe_chunk or len(side) or 1
        out: dict[int, float] = {}
        for a in range(0, len(side), size):
            group = side[a : a + size]
            if len(group) < 2:
                continue
            chosen = tuple(probes[i] for i in group)
            with self.copies(chosen):
                values = loss_at(chosen)
            out.update(zip(group, map(float, values), strict=True))
        for i, probe in enumerate(probes):
            if i not in out:
                with opt.perturb(probe):
                    out[i] = loss_at(probe)
        opt.probe = probes[-1]  # as after the sequential loop (`direction` reads the current probe)
        return [out[i] for i in range(len(probes))]

    @contextmanager
    def copies(self, probes: tuple[Probe, ...]) -> Iterator[None]:
        """Inside this block, a forward over the batch repeated len(probes) times gives copy j's rows
        probe j's weights (the parameters themselves never change, as under `perturb`)."""
        opt = self.opt
        self.probes, self.copy = probes, None
        self._tied = [{} for _ in probes]
        counts = Counter(p.k for p in probes if p.scale != 0.0)
        self._share = Counter({k: c for k, c in counts.items() if c > 1 and SHARE_Z})
        opt._scale = 0.0
        # Coverage is learnt from the first perturbed forward, as in `perturb`.
        opt._touched = None if opt._verified or not counts else set()
        try:
            yield
        finally:
            self.probes, self.copy = None, None
            opt._scale = 0.0
            for p, original in opt._active.values():  # a forward that raised leaves weights swapped
                p.data = original
            opt._active.clear()
            self._tied = []
            self._z.clear()
            self._z_numel = 0
            touched, opt._touched = opt._touched, None
        if touched is not None:
            opt._check_coverage(touched)

    @contextmanager
    def as_copy(self, j: int) -> Iterator[None]:
        """The optimizer's hooks perturb as in probe j's own forward (`perturb`'s state, for one copy)."""
        assert self.probes is not None
        opt = self.opt
        probe = self.probes[j]
        tied = opt._tied_cache
        self.copy, opt.probe, opt._scale, opt._tied_cache = j, probe, probe.scale * opt.cfg.eps, self._tied[j]
        try:
            yield
        finally:
            self.copy, opt._scale, opt._tied_cache = None, 0.0, tied

    def shares(self, probe: Probe) -> bool:
        """Whether this probe's weights are formed from a z drawn once for several copies."""
        return self.copy is not None and probe.k in self._share

    def perturbed(self, run: Run, scale: float) -> torch.Tensor:
        """The run's weights at x + scale·z_k for the current copy, z_k drawn (fp32) by the first copy
        along it and kept until the last one has used it. At most one block's worth of z is kept: a
        chunked head's rows (a run without segments), which outgrow it, are drawn per copy."""
        opt = self.opt
        if not run.segments:
            return opt.block_weights(opt.base_weights(run), run, scale)
        k = opt.probe.k
        key = (run.group, run.start, run.end, k)
        entry = self._z.get(key)
        if entry is None:
            numel = run.end - run.start
            if self._z_numel + numel > self._limit:
                self._z.clear()
                self._z_numel = 0
            x = opt.base_weights(run)
            zeros = torch.zeros((), dtype=torch.float32, device=x.device).expand(numel)
            entry = self._z[key] = [opt.block_weights(zeros, run, 1.0), self._share[k]]
            self._z_numel += numel
        z = entry[0]
        entry[1] -= 1
        if entry[1] <= 0:
            del self._z[key]
            self._z_numel -= z.numel()
        return opt.kernel(shifted)(opt.base_weights(run), z, scale)

    def split_call(self, module: nn.Module, args: tuple, kwargs: dict) -> object:
        """module(*args, **kwargs) over the repeated batch: once per copy on its rows, joined."""
        assert self.probes is not None
        count = len(self.probes)
        lead = next((v for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.ndim >= 1), None)
        if lead is None:
            raise ZOError(f"optimizer.batched_probes: {type(module).__name__} got no tensor to split by copy")
        n = lead.shape[0]
        if n % count:
            raise ZOError(
                f"optimizer.batched_probes: {type(module).__name__}'s input has {n} rows, not a multiple "
                f"of the {count} probes side by side; set optimizer.batched_probes=false for this model"
            )
        rows = n // count
        outs = []
        for j in range(count):
            part = _Part(lead, n, slice(j * rows, (j + 1) * rows))
            with self.as_copy(j):
                outs.append(module(*part(args), **part(kwargs)))
        return _join(outs, rows, type(module).__name__)


class _Part:
    """Copy j's share of a module's arguments: its rows of every batch-major tensor."""

    def __init__(self, lead: torch.Tensor, n: int, rows: slice) -> None:
        self.lead, self.n, self.rows = lead, n, rows

    def __call__(self, value):
        if torch.is_tensor(value):
            split = value is self.lead or (value.ndim >= 2 and value.shape[0] == self.n)
            return value[self.rows] if split else value
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*map(self, value))
        if isinstance(value, (tuple, list)):
            return type(value)(map(self, value))
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if callable(getattr(value, "get_seq_length", None)):  # a transformers Cache
            if value.get_seq_length() == 0:
                return None  # empty: a training forward only writes it
            raise ZOError(
                "optimizer.batched_probes cannot split a filled key/value cache across probes "
                "(model.trainable=prefix): set optimizer.batched_probes=false"
            )
        return value


def _join(outs: list, rows: int, name: str):
    """The copies' outputs as one: tensors of `rows` rows concatenated along dim 0, containers
    element by element; anything else must be the same in every copy."""
    first = outs[0]
    if torch.is_tensor(first) and first.ndim >= 1 and first.shape[0] == rows:
        return torch.cat(outs)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_join(list(parts), rows, name) for parts in zip(*outs, strict=True)))
    if isinstance(first, (tuple, list)):
        return type(first)(_join(list(parts), rows, name) for parts in zip(*outs, strict=True))
    if isinstance(first, dict):  # a ModelOutput
        return type(first)(**{key: _join([o[key] for o in outs], rows, name) for key in first})
    same = all(
        o is first or (torch.is_tensor(o) and torch.is_tensor(first) and torch.equal(o, first)) for o in outs
    )
    if not same:
        raise ZOError(
            f"optimizer.batched_probes: {name} returned an output that is not split by copy; "
            "set optimizer.batched_probes=false for this model"
        )
    return first


class _Split:
    """A hooked module's forward, replaced (like base._ChunkedLinear, inside accelerate's wrapper)
    by one that splits a batched call by copy; outside a batched forward, or inside one copy, it is
    the module's own forward."""

    def __init__(self, batched: BatchedProbes, module: nn.Module) -> None:
        self.batched, self.module = batched, module
        self.slot = "_old_forward" if hasattr(module, "_hf_hook") else "forward"
        self.previous = vars(module).get(self.slot)  # accelerate's or a _ChunkedLinear; None: the class's
        setattr(module, self.slot, self)

    def __call__(self, *args, **kwargs):
        b = self.batched
        if b.probes is not None and b.copy is None:
            return b.split_call(self.module, args, kwargs)
        if self.previous is not None:
            return self.previous(*args, **kwargs)
        return type(self.module).forward(self.module, *args, **kwargs)

    def remove(self) -> None:
        if self.previous is None:
            vars(self.module).pop(self.slot, None)
        else:
            setattr(self.module, self.slot, self.previous)
