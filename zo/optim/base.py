"""The interface every ZO optimizer implements, and the machinery they share.

One step of any optimizer here reads like the algorithm (`ZOOptimizer.step`):

    opt.begin_step(t)
    for probe in opt.probes():                     # MeZO: x + λz, x − λz
        with opt.perturb(probe): losses.append(f(batch))
    opt.estimate(losses)                           # p = (f+ - f-) / 2λ
    opt.update(lr, beta)                           # x, and any state, move along p·z

A `Probe` says where one forward looks: at x + scale·λ·z_k (scale 0 is x itself),
on the batch or the whole training set, at the live weights or a snapshot, with or
without a backward pass. MeZO asks for two; HiZOO three; LOREN K one-sided ones.

The default direction has the form z = a·n + c·m: n ~ N(0, I) (or Rademacher ±1,
`optimizer.noise`) regenerated from the step seed by flat index (zo.noise), m the
optimizer's momentum (c = 0 for MeZO). The parameters live in a few flat buffers
(zo.flat), so a pass over them is one kernel per buffer, fused with the noise draw
and the rounding (zo.fused).
A method whose direction has another shape (low-rank U·Vᵀ, a learned covariance,
1/√H scaling) overrides `block_weights` (and `embedding_rows`): the one question
the block hooks ask the optimizer is "what are these weights at x + s·z?".

Perturbation never writes the parameters. Forward hooks hand each block of
modules (a transformer layer, say) a perturbed copy of its weights for the
duration of its forward and put the originals back afterwards. So (1) after the
two forwards the parameters are bitwise what they were before, in any dtype
(x + λz − 2λz + λz is not exact in fp16/bf16, nor even in fp32), and (2) the
transient memory is one block's weights, never a model-sized z.

Subclasses say what a and c are (`coefficients`) and how x and the state move
(`update`, one fused kernel per buffer). Each has its own `Config` (a dataclass
extending `OptimConfig` with the method's keys and their `checks`), which mirrors
conf/optimizer/<name>.yaml.

A model may hold R independent problems as the rows of one parameter (it says so with
`zo_rows`: the batched quadratic of bench/synthetic.py). Then every per-step number is
an (R, 1) column and each buffer is seen as (R, d), so the same kernels run R problems
at once. Everything that differs between one problem and R rows is in `Single` and `Rows`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from zo import Diverged, ZOError
from zo.flat import FlatParams, Run, Segment, block_limit, blocks
from zo.fused import kernel
from zo.noise import NOISE_VERSION, NOISE_VERSIONS, NOISES, draw_name, mix, noise_at, positions

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUT = "flat-v1"  # checkpoints of optimizer state say which layout their buffers follow
STALL_STEPS = 25  # this many exactly-zero estimates in a row earn a warning: the run is not moving


@dataclass
class OptimConfig:
    """Knobs shared by all optimizers (mirrors conf/optimizer/*.yaml)."""

    name: str
    lr: float = 1e-6
    eps: float = 1e-3  # λ, the smoothing / perturbation scale
    weight_decay: float = 0.0
    beta: float = 0.99  # final momentum (momentum optimizers)
    theta: float = 1.35  # cone half-angle in radians (conmezo)
    unit_u: bool = True  # conmezo: u exactly unit (True) or N(0, I)/√d (the paper's practical choice)
    momentum_dtype: str = "fp32"  # fp32 | fp16 | bf16 | param: storage of the momentum buffer
    stochastic_rounding: bool = True  # round low-precision writes stochastically (unbiased)
    fused: bool = True  # torch.compile the passes over the weights (False: same math eagerly, slower)
    queries: int = 1  # probe pairs (or probes) per step, for the methods that take several
    noise: str = "gaussian"  # gaussian | rademacher: the distribution of each entry of n (zo.noise)
    # Which version of the Gaussian draw (zo.noise): not a YAML key. New runs draw the current one;
    # a replay or a resume builds the optimizer with the version its log or checkpoint records.
    noise_version: int = NOISE_VERSION
    batched_probes: bool = False  # the probes on the batch at the live weights share one forward (zo.batched)
    probe_chunk: int = 0  # batched_probes: at most this many probes per forward (0: all of them)
    noises: ClassVar[tuple[str, ...]] = NOISES  # the kinds of `noise` this method's direction can take

    def __post_init__(self) -> None:
        """A noise this method cannot draw its direction from is refused however the config is built
        (zo.config.validate turns the ZOError into a ConfigError)."""
        if self.noise not in self.noises:
            raise ZOError(
                f"optimizer.noise={self.noise} is invalid: optimizer {self.name} allows "
                + " or ".join(self.noises)
            )

    def checks(self) -> dict[str, tuple[bool, str]]:
        """key -> (value is allowed, what is allowed); `zo.config.validate` reports the first failure.
        A subclass adds its own keys' ranges: `return super().checks() | {...}`."""
        moms = [*DTYPES, "param"]
        return {
            "lr": (self.lr >= 0, "lr >= 0"),
            "eps": (self.eps > 0, "eps > 0"),
            "weight_decay": (self.weight_decay >= 0, "weight_decay >= 0"),
            "beta": (0.0 <= self.beta < 1.0, "0 <= beta < 1"),
            "theta": (0.0 <= self.theta <= math.pi / 2, "0 <= theta <= pi/2 (radians)"),
            "momentum_dtype": (self.momentum_dtype in moms, "one of " + ", ".join(moms)),
            "queries": (self.queries >= 1, "queries >= 1"),
            "noise_version": (self.noise_version in NOISE_VERSIONS, f"one of {NOISE_VERSIONS}"),
            "probe_chunk": (self.probe_chunk >= 0, "probe_chunk >= 0 (0: every probe in one forward)"),
        }


@dataclass(frozen=True)
class Probe:
    """One forward of a step.

    scale: the forward sees x + scale·λ·z_k (0: x itself);
    k: which of the step's directions (LOREN's K queries, MEAZO's q pairs); z_0 is the step's z;
    data: "batch" (the step's batch) or "full" (the whole training set, MeZO-SVRG's anchor);
    at: "live" weights or the optimizer's "snapshot" (MeZO-SVRG's x̃);
    grad: run a backward pass in this forward (first-order methods).
    """

    scale: float
    k: int = 0
    data: str = "batch"
    at: str = "live"
    grad: bool = False


TWO_POINT = (Probe(+1.0), Probe(-1.0))


def perturbed_at(
    x: torch.Tensor, m: torch.Tensor | None, idx: torch.Tensor, seed: int, noise: str, a: float, c: float
) -> torch.Tensor:
    """x + a·n + c·m in x's dtype, n the step's noise (of kind `noise`) at flat indices idx (λ and sign
    folded in a, c)."""
    z = a * noise_at(noise)(idx, seed)
    if m is not None:
        z = z + c * m.float()
    return (x.float() + z).to(x.dtype)


def perturbed(
    x: torch.Tensor, m: torch.Tensor | None, start: int, seed: int, noise: str, a: float, c: float
) -> torch.Tensor:
    """`perturbed_at` for a contiguous stretch of the flat vector starting at index start."""
    return perturbed_at(x, m, index_of(x, start), seed, noise, a, c)


def perturbed_rows(
    rows: torch.Tensor,
    m: torch.Tensor | None,
    ids: torch.Tensor,
    start: int,
    seed: int,
    noise: str,
    a: float,
    c: float,
) -> torch.Tensor:
    """Rows `ids` of a perturbed (V, H) matrix, given its unperturbed rows; m is the whole matrix's
    momentum. Element (r, j) has flat index start + r·H + j, as in `perturbed`, so the values agree."""
    width = rows.shape[-1]
    idx = start + ids.unsqueeze(-1) * width + torch.arange(width, device=rows.device)
    return perturbed_at(rows, None if m is None else m[ids], idx, seed, noise, a, c)


def index_of(x: torch.Tensor, start: int) -> torch.Tensor:
    """Flat indices of x's elements, shaped like x: x is a contiguous stretch of the flat vector that
    starts at index start, 1-D or seen as rows (`Rows.view`), so the draws broadcast like x."""
    return positions(start, x.numel(), x.device).view(x.shape)


class Single:
    """The flat vector is one problem (every LM run): each per-step number (p, ‖m‖, a, c) is a float."""

    count = 1

    def __init__(self, d: int) -> None:
        self.d = d  # dimension of one problem

    def view(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """A flat stretch of whole problems, as the kernels see it."""
        return t

    def total(self, parts: Iterable[torch.Tensor]) -> torch.Tensor:
        """The sum of per-buffer partial sums, gathered on the first one's device: under a device map
        the buffers live on several devices, and tensors on two GPUs do not add."""
        parts = list(parts)
        return sum((p.to(parts[0].device) for p in parts[1:]), parts[0])

    def norm(self, total_sq: torch.Tensor) -> float:
        """√ of a sum of squares the kernels reduced (one host sync)."""
        return math.sqrt(float(total_sq))

    def angle(self, theta: float) -> tuple[float, float]:
        return math.cos(theta), math.sin(theta)

    def is_zero(self, v: float) -> bool:
        return v == 0.0

    def divide(self, num: float, den: float) -> float:
        """num / den, and 0 where den is 0 (a step with nothing to scale it by moves nothing)."""
        return num / den if den != 0.0 else 0.0

    def finite(self, values: Sequence[float]) -> bool:
        return all(math.isfinite(v) for v in values)

    def require(self, ok: bool, message: Callable[[], str]) -> None:
        """Stop the run on a failed check (a non-finite loss, a broken momentum)."""
        if not ok:
            raise Diverged(message())


class Rows(Single):
    """R independent problems of dimension d side by side: the flat vector is X ∈ R^{R×d}, row-major.

    Each per-step number is an (R, 1) fp32 column that broadcasts against the (R, d) view of a
    buffer, so the kernels (elementwise, reductions along the last axis) are the same functions.
    The caller gives per-row settings as columns too: η and β to `step`, θ in the config. Rows never
    mix, and row r's noise is independent of the others' because its flat indices differ. A row
    whose values stop being finite (a diverging grid point) is marked `dead` instead of stopping
    the batch; its NaNs stay in its own row.
    """

    def __init__(self, count: int, d: int, device: torch.device) -> None:
        super().__init__(d // count)
        self.count = count
        self.dead = torch.zeros(count, 1, dtype=torch.bool, device=device)

    def view(self, t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.view(self.count, -1)

    def norm(self, total_sq: torch.Tensor) -> torch.Tensor:
        return total_sq.sqrt()

    def angle(self, theta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.as_tensor(theta, dtype=torch.float64)
        return theta.cos().float(), theta.sin().float()

    def is_zero(self, v: float | torch.Tensor) -> bool:
        return bool((torch.as_tensor(v) == 0.0).all())

    def divide(self, num: float | torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den != 0.0, num / den, 0.0)

    def finite(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.isfinite(torch.cat(list(values), 1)).all(1, keepdim=True)

    def require(self, ok: torch.Tensor, message: Callable[[], str]) -> None:
        self.dead |= ~ok


class _ChunkedLinear:
    """A big nn.Linear (an LM head) that, while perturbed, runs in chunks of `rows` output rows,
    each chunk's weights perturbed just before its matmul: the perturbed copy of the matrix
    never exists whole. Installed as the module's forward; `remove` gives the module back its own.
    Under an accelerate device map the module's forward is accelerate's wrapper (it moves the input
    to the module's device, then calls `_old_forward`): the chunks go in its place, inside it."""

    def __init__(self, opt: ZOOptimizer, module: nn.Linear, seg: Segment, rows: int) -> None:
        self.opt, self.module, self.seg, self.rows = opt, module, seg, rows
        self.slot = "_old_forward" if hasattr(module, "_hf_hook") else "forward"
        self.previous = vars(module).get(self.slot)  # accelerate's; None: the class's own forward
        setattr(module, self.slot, self)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        module, seg = self.module, self.seg
        if not self.opt._perturbing(seg):
            return F.linear(x, module.weight, module.bias)
        width, height = module.in_features, module.out_features
        out = None
        for r0 in range(0, height, self.rows):
            r1 = min(r0 + self.rows, height)
            w = self.opt._perturbed(Run(seg.group, seg.start + r0 * width, seg.start + r1 * width))
            y = F.linear(x, w.view(r1 - r0, width), None if module.bias is None else module.bias[r0:r1])
            if out is None:
                out = y.new_empty(*y.shape[:-1], height)
            out[..., r0:r1] = y
        assert out is not None
        return out

    def remove(self) -> None:
        if self.previous is None:
            vars(self.module).pop(self.slot, None)
        else:
            setattr(self.module, self.slot, self.previous)


class ZOOptimizer:
    """Two-point zeroth-order optimizer over a module's trainable parameters."""

    name: ClassVar[str]
    Config: ClassVar[type[OptimConfig]] = OptimConfig
    uses_beta: ClassVar[bool] = False  # the runner passes β_t from the schedule to `update`
    supports_queries: ClassVar[bool] = False  # takes optimizer.queries > 1
    supports_rows: ClassVar[bool] = False  # runs a model of R problems as rows (`Rows`)

    def __init__(self, model: nn.Module, cfg: OptimConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ZOError("the model has no trainable parameters: check model.trainable")
        hooked = blocks(model, self.params)
        self.flat = FlatParams(self.params, cut_before={id(ps[0]) for _, ps in hooked})
        self.d = self.flat.d
        self.rows = self._layout(getattr(model, "zo_rows", 1))
        self.step_seed = 0
        self.projected_grad = 0.0
        self._zero_streak = 0
        self.momentum: list[torch.Tensor] | None = None  # one per flat buffer, for optimizers that keep one
        self._scale = 0.0
        self.probe = TWO_POINT[0]  # the probe being evaluated (its k picks the direction)
        self._active: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        self._touched: set[int] | None = None
        self._verified = False
        self._entries: list[nn.Module] = []  # every module a hook perturbs on entry (zo.batched wraps them)
        self._hooks = self._install_hooks(
            model, [(m, [self.flat.index[id(p)] for p in ps]) for m, ps in hooked]
        )
        self.batched = None  # optimizer.batched_probes: runs a step's probes side by side (zo.batched)
        if cfg.batched_probes:
            from zo.batched import BatchedProbes

            self.batched = BatchedProbes(self, self._entries)
            self._hooks += self.batched.handles
        decays = cfg.weight_decay != 0.0  # split the update only where the decay factor differs
        self._update_runs = self.flat.runs(self.flat.segments, lambda a, b: decays and a.decays != b.decays)

    def _layout(self, count: int) -> Single:
        """One problem, or `count` problems as rows (`Rows`), if this optimizer and the model allow it."""
        if count == 1:
            return Single(self.d)
        shape = self.params[0].shape
        if not self.supports_rows or len(self.params) != 1 or shape[0] != count:
            raise ZOError(
                f"optimizer {self.name} cannot run a model of {count} problems as rows (one trainable "
                "(rows, d) tensor and an optimizer that supports rows): run them one by one"
            )
        return Rows(count, self.d, self.params[0].device)

    def kernel(self, fn):
        return kernel(fn, self.cfg.fused)

    def close(self) -> None:
        """Remove the hooks (and chunked forwards), so another optimizer can drive the same model."""
        for handle in reversed(self._hooks):  # the last installed wraps the ones before it
            handle.remove()
        self._hooks = []

    # ---- one step ---------------------------------------------------------------------------
    def step(self, t: int, loss_at: Callable[[Probe], float], lr: float, beta: float | None) -> list[float]:
        """Step t: every probe's forward (`loss_at` evaluates the loss with the probe's weights in
        place), the estimate, the update. Returns the probes' losses, in `probes()` order."""
        self.begin_step(t)
        losses = self.forwards(self.probes(), loss_at)
        self.estimate(losses)
        self.update(lr, beta)
        return losses

    def forwards(self, probes: Sequence[Probe], loss_at: Callable) -> list[float]:
        """The probes' losses, in order: one forward each, or, with optimizer.batched_probes, those on
        the batch at the live weights side by side in one forward (zo.batched; loss_at then also
        takes a tuple of probes and returns their losses)."""
        if self.batched is not None:
            return self.batched.losses(probes, loss_at)
        losses = []
        for probe in probes:
            with self.perturb(probe):
                losses.append(loss_at(probe))
        return losses

    def replay(self, t: int, losses: Sequence[float], lr: float, beta: float | None) -> None:
        """Step t again from its probes' recorded losses, with no forward (zo.replay): the estimate and
        the update are functions of the losses, the step seed and the state, so this lands on the
        same weights as the live step."""
        self.begin_step(t)
        self.estimate(losses)
        self.update(lr, beta)

    def probes(self) -> Sequence[Probe]:
        """The forwards of this step (after `begin_step`): two-point by default."""
        return TWO_POINT

    def logged_loss(self, losses: Sequence[float]) -> float:
        """The training loss a step reports: the mean over its probes."""
        return sum(losses) / len(losses)

    def logged_lr(self, lr: float) -> float:
        """The lr a step reports, given the runner's: that lr (MeZO-SVRG: its annealed η_mb)."""
        return lr

    def set_data(self, examples: int, batch_size: int) -> None:
        """The size of the training set and of a batch, told once before the first step (and before
        a replay): MeZO-SVRG's annealing counts epochs. The others need neither."""

    def step_metrics(self) -> dict[str, float]:
        """Numbers of the method's own that each step's metrics row carries (FZOO: skipped steps)."""
        return {}

    # ---- directions ---------------------------------------------------------------------------
    @property
    def draw(self) -> str:
        """The `noise` argument of the kernels (zo.noise.draw_name): the kind and its draw's version."""
        return draw_name(self.cfg.noise, self.cfg.noise_version)

    def begin_step(self, step: int) -> None:
        """Fix the step's randomness: everything drawn this step is a function of (seed, step)."""
        self.step_seed = mix(self.seed, step)

    def noise_seed(self, k: int | None = None) -> int:
        """Seed of this step's direction z_k (default: the current probe's): z_0 uses the step seed itself."""
        k = self.probe.k if k is None else k
        return self.step_seed if k == 0 else mix(self.step_seed, 0xD12EC7, k)

    def round_seed(self, salt: int) -> int:
        """Seed of the stochastic-rounding draws of this step's writes (1: weights, 2: momentum)."""
        return mix(self.step_seed, salt)

    def coefficients(self) -> tuple[float, float]:
        """(a, c) of this step's direction z = a·n + c·m."""
        return 1.0, 0.0

    def _momentum_slice(self, run: Run) -> torch.Tensor | None:
        """The run's stretch of m (None for optimizers without momentum)."""
        return None if self.momentum is None else self.momentum[run.group][run.start : run.end]

    def direction(self, i: int) -> torch.Tensor:
        """The current probe's z restricted to parameter i, as fp32 with its shape (tests, alignment)."""
        seg = self.flat.segments[i]
        zeros = torch.zeros(seg.numel, dtype=torch.float32, device=seg.param.device)
        return self.block_weights(zeros, seg.run(), 1.0).view(seg.param.shape)

    def block_weights(self, x: torch.Tensor, run: Run, scale: float) -> torch.Tensor:
        """x + scale·z over `run`, as one fresh tensor in x's dtype: what a block hook asks for.

        `x` holds the run's values (the weights, or zeros for `direction`). The run is whole
        segments of one buffer, or a range of whole rows of one segment (a chunked head). A method
        whose z is not a·n + c·m elementwise overrides this (and `embedding_rows`).
        """
        a, c = self.coefficients()
        m = None if self.rows.is_zero(c) else self.rows.view(self._momentum_slice(run))
        start = self.flat.slice(run)[1]
        seed, noise = self.noise_seed(), self.draw
        out = self.kernel(perturbed)(self.rows.view(x), m, start, seed, noise, scale * a, scale * c)
        return out.view_as(x)

    def embedding_rows(
        self, rows: torch.Tensor, ids: torch.Tensor, seg: Segment, scale: float
    ) -> torch.Tensor:
        """Rows `ids` of embedding seg at x + scale·z, given its unperturbed rows (the lookup's output)."""
        a, c = self.coefficients()
        run = seg.run()
        m = self._momentum_slice(run).view(seg.param.shape) if c != 0.0 else None
        start = self.flat.slice(run)[1]
        seed, noise = self.noise_seed(), self.draw
        return self.kernel(perturbed_rows)(rows, m, ids, start, seed, noise, scale * a, scale * c)

    # ---- perturbation -------------------------------------------------------------------------
    def _install_hooks(self, model: nn.Module, hooked: list[tuple[nn.Module, list[Segment]]]) -> list:
        """Hooks on every block, and the two special cases that would otherwise copy a whole matrix.

        An embedding perturbs only the rows it looked up (its output), and a linear layer bigger
        than a block (an LM head) runs in chunks of rows, each perturbed just before its matmul.
        Without them a tied embedding/head copy, often the largest tensor in the model, would stay
        alive for the whole forward.
        """
        limit = block_limit(self.d)
        handles: list = []
        own: dict[int, int] = {}  # id(module) -> id(weight) it perturbs itself
        for module in model.modules():
            seg = self.flat.index.get(id(getattr(module, "weight", None)))
            if seg is None:
                continue
            if type(module).forward is nn.Embedding.forward and module.max_norm is None:
                handles.append(module.register_forward_hook(self._make_row_hook(seg)))
                own[id(module)] = id(seg.param)
                self._entries.append(module)
            elif type(module).forward is nn.Linear.forward and seg.numel > limit:
                handles.append(_ChunkedLinear(self, module, seg, rows=max(limit // module.in_features, 1)))
                own[id(module)] = id(seg.param)
                self._entries.append(module)
        # A block stops swapping in a weight that a module inside it perturbs itself. A tied twin
        # elsewhere (the head of an embedding) still gets it from its own block.
        inside = [{own.get(id(m)) for m in block.modules()} for block, _ in hooked]
        hooked = [
            (block, [s for s in segments if id(s.param) not in done])
            for (block, segments), done in zip(hooked, inside, strict=True)
        ]
        owners: dict[int, int] = {}
        for _, segments in hooked:
            for s in segments:
                owners[id(s.param)] = owners.get(id(s.param), 0) + 1
        # A weight entered by two blocks (tied, and not an embedding/head pair) keeps its perturbed
        # copy for the whole forward instead of drawing z for it twice.
        self._tied = {key for key, count in owners.items() if count > 1}
        self._tied_cache: dict[int, torch.Tensor] = {}
        for module, segments in hooked:
            if not segments:
                continue
            runs = self.flat.runs(
                segments, lambda a, b: id(a.param) in self._tied or id(b.param) in self._tied
            )
            handles.append(module.register_forward_pre_hook(self._make_pre_hook(runs)))
            handles.append(module.register_forward_hook(self._make_post_hook(runs)))
            self._entries.append(module)
        return handles

    def _perturbed(self, run: Run) -> torch.Tensor:
        """The run's weights at x ± λz, as one fresh tensor."""
        if self.batched is not None and self.batched.shares(self.probe):  # z drawn once for ± copies
            return self.batched.perturbed(run, self._scale)
        return self.block_weights(self.base_weights(run), run, self._scale)

    def base_weights(self, run: Run) -> torch.Tensor:
        """The weights a perturbed forward starts from: the live ones (MeZO-SVRG: its snapshot)."""
        return self.flat.slice(run)[0]

    def _perturbing(self, seg: Segment) -> bool:
        """Whether seg's module must perturb it now (not when an enclosing module already did)."""
        if self._scale == 0.0 or id(seg.param) in self._active:
            return False
        self._mark(seg.param)
        return True

    def _mark(self, param: nn.Parameter) -> None:
        """Note that param was perturbed (on the first steps, for the coverage check)."""
        if self._touched is not None:
            self._touched.add(id(param))

    def _make_row_hook(self, seg: Segment):
        def row_hook(module: nn.Embedding, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not self._perturbing(seg):
                return None
            return self.embedding_rows(output, args[0], seg, self._scale)

        return row_hook

    def _make_pre_hook(self, runs: list[Run]):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if self._scale == 0.0:
                return
            for run in runs:
                key = id(run.segments[0].param)
                if key in self._active:  # a tied weight, already perturbed by an enclosing module
                    continue
                values = self._tied_cache.get(key) if key in self._tied else None
                if values is None:
                    values = self._perturbed(run)
                    if key in self._tied:
                        self._tied_cache[key] = values
                for s in run.segments:
                    self._swap_in(s, values[s.start - run.start : s.start - run.start + s.numel])

        return pre_hook

    def _swap_in(self, s: Segment, values: torch.Tensor) -> None:
        self._active[id(s.param)] = (s.param, s.param.data)
        s.param.data = values.view_as(s.param)
        self._mark(s.param)

    def _make_post_hook(self, runs: list[Run]):
        def post_hook(module: nn.Module, args: tuple, output: object) -> None:
            for run in runs:
                for s in run.segments:
                    saved = self._active.pop(id(s.param), None)
                    if saved is not None:
                        s.param.data = saved[1]

        return post_hook

    @contextmanager
    def perturb(self, probe: Probe | float) -> Iterator[None]:
        """Inside this block, forwards see the probe's weights (x + scale·λ·z_k); the parameters
        themselves never change. A bare number is the scale of a probe along z_0."""
        self.probe = probe if isinstance(probe, Probe) else Probe(float(probe))
        self._scale = self.probe.scale * self.cfg.eps
        # Coverage is learnt from the first perturbed forward (a probe at x itself perturbs nothing).
        self._touched = None if self._verified or self._scale == 0.0 else set()
        try:
            yield
        finally:
            self._scale = 0.0
            for p, original in self._active.values():  # a forward that raised leaves weights swapped
                p.data = original
            self._active.clear()
            self._tied_cache.clear()
            touched, self._touched = self._touched, None
        if touched is not None:
            self._check_coverage(touched)

    def _check_coverage(self, touched: set[int]) -> None:
        """A weight used outside its block's forward would silently never be perturbed."""
        missing = [i for i, p in enumerate(self.params) if id(p) not in touched]
        if missing:
            raise ZOError(
                f"{len(missing)} trainable tensors were not perturbed because the model reads them "
                "outside their module's forward; freeze them (model.trainable) or report the architecture"
            )
        self._verified = True

    # ---- estimate and update ------------------------------------------------------------------
    def estimate(self, losses: Sequence[float]) -> float:
        """Projected gradient p = (f(x+λz) − f(x−λz)) / 2λ, the step size along z (losses in
        `probes()` order). Subclasses with other probes override it and call `note_estimate`."""
        self.check_finite(losses)
        return self.note_estimate((losses[0] - losses[1]) / (2.0 * self.cfg.eps))

    def check_finite(self, losses: Sequence[float]) -> None:
        self.rows.require(
            self.rows.finite(losses),
            lambda: (
                f"loss is not finite (probes: {', '.join(f'{v:.6g}' for v in losses)}); lower "
                "optimizer.lr or optimizer.eps, or use model.dtype=fp32; the last checkpoint and metrics "
                "are kept"
            ),
        )

    def note_estimate(self, projected: float) -> float:
        """Record the step's projected gradient (logged per step) and watch for a stalled run."""
        self.projected_grad = projected
        self._zero_streak = self._zero_streak + 1 if self.rows.is_zero(projected) else 0
        if self._zero_streak == STALL_STEPS:
            warnings.warn(
                f"f(x+λz) == f(x−λz) exactly for {STALL_STEPS} steps in a row, so nothing moves: λ is below "
                "the loss's resolution; raise optimizer.eps or use model.dtype=fp32",
                RuntimeWarning,
                stacklevel=2,
            )
        return self.projected_grad

    def update(self, lr: float, beta: float | None) -> None:
        raise NotImplementedError

    def slices(self, lr: float) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int, float]]:
        """(x, m, flat index of x[0], weight-decay factor) for each stretch the update kernel runs on.

        One per buffer; with weight decay on, also split where decay starts or stops applying.
        """
        for run in self._update_runs:
            x, start = self.flat.slice(run)
            m = self._momentum_slice(run)
            decay = 1.0 - lr * self.cfg.weight_decay if run.segments[0].decays else 1.0
            yield self.rows.view(x), self.rows.view(m), start, decay

    # ---- alignment and state ------------------------------------------------------------------
    def reference_vector(self, i: int) -> torch.Tensor:
        """The vector whose alignment with the true gradient is logged (momentum, or this step's z)."""
        if self.momentum is None:
            return self.direction(i)
        s = self.flat.segments[i]
        m = self._momentum_slice(s.run())
        assert m is not None
        return m.float().view(s.param.shape)

    def new_momentum(self) -> list[torch.Tensor]:
        """A zero momentum buffer beside each parameter buffer, in the configured dtype."""
        return [torch.zeros_like(b.data, dtype=self.momentum_dtype(b.data)) for b in self.flat.buffers]

    def momentum_dtype(self, p: torch.Tensor) -> torch.dtype:
        return p.dtype if self.cfg.momentum_dtype == "param" else DTYPES[self.cfg.momentum_dtype]

    def state_dict(self) -> dict:
        return {"name": self.name, "d": self.d, "layout": LAYOUT, "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or state.get("d") != self.d:
            raise ZOError(
                f"checkpoint holds optimizer {state.get('name')} over {state.get('d')} parameters, "
                f"this run uses {self.name} over {self.d}: use a fresh output folder or force=true"
            )
        saved = state["momentum"] or []
        if state.get("layout") != LAYOUT or [t.shape for t in saved] != [
            t.shape for t in self.momentum or []
        ]:
            raise ZOError(
                "checkpoint's optimizer state was written by an older zo-runner layout: "
                "use a fresh output folder or force=true"
            )
        for buf, value in zip(self.momentum or [], saved, strict=True):
            buf.copy_(value)
