"""The trainable parameters as one flat vector x ∈ R^d, stored in a few contiguous buffers.

ZO optimizers act on x as a whole (z ∈ R^d, x ← x − η p z), so the parameters
are re-homed into contiguous buffers and each `nn.Parameter` becomes a view of
its slice. A step then touches the weights with one kernel per buffer and each
perturbed forward with one kernel per block of modules, instead of several small
kernels per tensor. The buffers follow module order and are cut only between
blocks, so a block's weights are one contiguous range. A buffer holds a single
(device, dtype) and about 1/8 of the model: re-homing copies one buffer's worth
at a time, so setting up costs 1/8 of the model in transient memory, not a
second copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

BUFFERS_PER_MODEL = 8  # caps a buffer at ~d/8 elements: the transient memory of re-homing
BLOCK_FRACTION = 24  # a module subtree is perturbed as one block when it holds ≤ d/24 weights
CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def block_limit(d: int) -> int:
    """Most weights a block may hold; also the size above which a linear layer runs in chunks."""
    return max(d // BLOCK_FRACTION, 1)


@dataclass
class Segment:
    """One parameter: its slice [start, start + numel) of buffer `group`."""

    param: nn.Parameter
    group: int
    start: int
    numel: int
    decays: bool  # weight decay applies (matrices and embeddings, not biases or norm weights)

    def run(self) -> Run:
        """This parameter alone, as a run."""
        return Run(self.group, self.start, self.start + self.numel, [self])


@dataclass
class Run:
    """A contiguous range of one buffer, made of whole segments: the unit a kernel works on."""

    group: int
    start: int
    end: int
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Buffer:
    data: torch.Tensor
    offset: int  # index of data[0] in the flat vector x: what the noise is a function of


class FlatParams:
    """Trainable parameters re-homed into contiguous buffers, with their layout."""

    def __init__(self, params: list[nn.Parameter], cut_before: set[int] | None = None) -> None:
        """`cut_before`: ids of the parameters a buffer may start at (block starts), so blocks stay whole."""
        self.d = sum(p.numel() for p in params)
        cap = max(-(-self.d // BUFFERS_PER_MODEL), max(p.numel() for p in params))
        self.segments: list[Segment] = []
        self.buffers: list[Buffer] = []
        pending: list[nn.Parameter] = []
        size = offset = 0
        for p in params:
            full = size + p.numel() > cap and (cut_before is None or id(p) in cut_before)
            if pending and (full or (p.device, p.dtype) != (pending[0].device, pending[0].dtype)):
                self._rehome(pending, offset)
                offset += size
                pending, size = [], 0
            pending.append(p)
            size += p.numel()
        self._rehome(pending, offset)
        self.index = {id(s.param): s for s in self.segments}

    def _rehome(self, params: list[nn.Parameter], offset: int) -> None:
        group = len(self.buffers)
        data = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        start = 0
        for p in params:
            view = data[start : start + p.numel()].view_as(p)
            view.copy_(p.data)
            p.data = view  # the original storage is freed here (nothing else holds it)
            self.segments.append(Segment(p, group, start, p.numel(), decays=p.ndim >= 2))
            start += p.numel()
        self.buffers.append(Buffer(data, offset))

    def runs(self, segments: list[Segment], split: Callable[[Segment, Segment], bool]) -> list[Run]:
        """Merge segments (in order) into maximal contiguous runs, cut also where `split(prev, next)`."""
        runs: list[Run] = []
        for s in segments:
            last = runs[-1] if runs else None
            if (
                last is not None
                and last.group == s.group
                and last.end == s.start
                and not split(last.segments[-1], s)
            ):
                last.end += s.numel
                last.segments.append(s)
            else:
                runs.append(Run(s.group, s.start, s.start + s.numel, [s]))
        return runs

    def slice(self, run: Run) -> tuple[torch.Tensor, int]:
        """The run's weights and the flat index of their first element."""
        buffer = self.buffers[run.group]
        return buffer.data[run.start : run.end], buffer.offset + run.start


def blocks(model: nn.Module, params: list[nn.Parameter]) -> list[tuple[nn.Module, list[nn.Parameter]]]:
    """Modules to hook, each with the trainable parameters it perturbs on entry.

    A subtree holding at most d/BLOCK_FRACTION weights (a transformer layer, say) is
    one block: its weights are perturbed by one kernel when its forward starts, and
    the transient copy lives only as long as that forward. Bigger subtrees split into
    their children, plus a block for their own direct parameters. Containers have no
    forward of their own (their parent loops over them), so they always split.
    """
    wanted = {id(p) for p in params}
    limit = block_limit(sum(p.numel() for p in params))
    out: list[tuple[nn.Module, list[nn.Parameter]]] = []

    def visit(module: nn.Module) -> None:
        subtree = [p for p in module.parameters() if id(p) in wanted]
        if not subtree:
            return
        if sum(p.numel() for p in subtree) <= limit and not isinstance(module, CONTAINERS):
            out.append((module, subtree))
            return
        own = [p for p in module.parameters(recurse=False) if id(p) in wanted]
        if own:
            out.append((module, own))
        for child in module.children():
            visit(child)

    visit(model)
    return out
