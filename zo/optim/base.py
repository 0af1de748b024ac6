"""The interface every ZO optimizer implements, and the machinery they share.

One step of any optimizer here reads like the algorithm:

    opt.begin_step(t)
    with opt.perturb(+1): loss_plus = f(batch)     # forward at x + λz
    with opt.perturb(-1): loss_minus = f(batch)    # forward at x - λz
    opt.estimate(loss_plus, loss_minus)            # p = (f+ - f-) / 2λ
    opt.update(lr, beta)                           # x, and any state, move along p·z

Perturbation never writes the parameters. Forward hooks hand each module a
perturbed copy of its own weights for the duration of its forward and put the
original tensor back afterwards. So (1) the parameters after the two forwards
are bitwise what they were before, in any dtype (x + λz - 2λz + λz is not exact
in fp16/bf16, nor even in fp32), and (2) the transient memory is one module's
weights, not a model-sized z.

Subclasses only say what the direction z_i of parameter i is (`direction`) and
how the state moves (`update`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from zo import ZOError
from zo.noise import mix
from zo.rounding import store

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


class ZOOptimizer:
    """Two-point zeroth-order optimizer over a module's trainable parameters."""

    name: ClassVar[str]
    uses_beta: ClassVar[bool] = False

    def __init__(self, model: nn.Module, cfg: OptimConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ZOError("the model has no trainable parameters: check model.trainable")
        self._index = {id(p): i for i, p in enumerate(self.params)}
        # Weight decay skips biases and norm weights, i.e. every 1-D tensor.
        self.decays = [p.ndim >= 2 for p in self.params]
        self.d = sum(p.numel() for p in self.params)
        self.step_seed = 0
        self.projected_grad = 0.0
        self.momentum: list[torch.Tensor] | None = None  # set by optimizers that keep one
        self._scale = 0.0
        self._active: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        self._touched: set[int] | None = None
        self._verified = False
        self._hooks = self._install_hooks(model)

    # ---- directions ---------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Fix the step's randomness: everything drawn this step is a function of (seed, step)."""
        self.step_seed = mix(self.seed, step)

    def param_seed(self, i: int, salt: int = 0) -> int:
        return mix(self.step_seed, i, salt)

    def direction(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """This step's z restricted to parameter i, as fp32 with p's shape."""
        raise NotImplementedError

    # ---- perturbation -------------------------------------------------------------------------
    def _install_hooks(self, model: nn.Module) -> list:
        handles, owners = [], {}
        for module in model.modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in self._index]
            for p in own:
                owners[id(p)] = owners.get(id(p), 0) + 1
            if own:
                handles.append(module.register_forward_pre_hook(self._make_pre_hook(own)))
                handles.append(module.register_forward_hook(self._make_post_hook(own)))
        # Tied weights (input embedding = output head) are entered twice per forward: keep their
        # perturbed copy for the whole forward instead of drawing z for them twice.
        self._tied = {key for key, count in owners.items() if count > 1}
        self._tied_cache: dict[int, torch.Tensor] = {}
        return handles

    def _make_pre_hook(self, own: list[nn.Parameter]):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            if self._scale == 0.0:
                return
            for p in own:
                key = id(p)
                if key in self._active:  # tied weight already perturbed by an enclosing module
                    continue
                original = p.data
                perturbed = self._tied_cache.get(key)
                if perturbed is None:
                    z = self.direction(self._index[key], original)  # a fresh fp32 tensor: reuse it in place
                    perturbed = z.mul_(self._scale).add_(original).to(original.dtype)
                    if key in self._tied:
                        self._tied_cache[key] = perturbed
                p.data = perturbed
                self._active[key] = (p, original)
                if self._touched is not None:
                    self._touched.add(key)

        return pre_hook

    def _make_post_hook(self, own: list[nn.Parameter]):
        def post_hook(module: nn.Module, args: tuple, output: object) -> None:
            for p in own:
                saved = self._active.pop(id(p), None)
                if saved is not None:
                    p.data = saved[1]

        return post_hook

    @contextmanager
    def perturb(self, sign: float) -> Iterator[None]:
        """Inside this block, forwards see x + sign·λ·z; the parameters themselves never change."""
        self._scale = sign * self.cfg.eps
        self._touched = None if self._verified else set()
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
        """A weight used outside its owning module's forward would silently never be perturbed."""
        missing = [i for i, p in enumerate(self.params) if id(p) not in touched]
        if missing:
            raise ZOError(
                f"{len(missing)} trainable tensors were not perturbed because the model reads them "
                "outside their module's forward; freeze them (model.trainable) or report the architecture"
            )
        self._verified = True

    # ---- estimate and update ------------------------------------------------------------------
    def estimate(self, loss_plus: float, loss_minus: float) -> float:
        """Projected gradient p = (f(x+λz) − f(x−λz)) / 2λ, the step size along z."""
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            raise ZOError(
                f"loss is not finite (f+ = {loss_plus}, f- = {loss_minus}); lower optimizer.lr or "
                "optimizer.eps, or use model.dtype=fp32; the last checkpoint and metrics are kept"
            )
        self.projected_grad = (loss_plus - loss_minus) / (2.0 * self.cfg.eps)
        return self.projected_grad

    def update(self, lr: float, beta: float | None) -> None:
        raise NotImplementedError

    def write(self, dst: torch.Tensor, value: torch.Tensor, i: int, salt: int) -> None:
        """Store an fp32 result into a parameter or state tensor (stochastically rounded if asked)."""
        store(dst, value, self.param_seed(i, salt), self.cfg.stochastic_rounding)

    def step_param(self, i: int, p: torch.Tensor, along: torch.Tensor, lr: float) -> None:
        """x_i ← x_i − lr·(along + wd·x_i), computed in fp32 (in place when p is fp32)."""
        decay = 1.0 - lr * self.cfg.weight_decay if self.decays[i] else 1.0
        new = p if p.dtype == torch.float32 else p.float()
        if decay != 1.0:
            new.mul_(decay)
        new.add_(along, alpha=-lr)
        if new is not p:
            self.write(p, new, i, salt=1)

    def blend(self, i: int, m: torch.Tensor, g: torch.Tensor, beta: float) -> None:
        """m_i ← β m_i + (1 − β) g, in place when m is fp32."""
        if m.dtype == torch.float32:
            m.mul_(beta).add_(g, alpha=1.0 - beta)
        else:
            self.write(m, m.float().mul_(beta).add_(g, alpha=1.0 - beta), i, salt=2)

    # ---- alignment and state ------------------------------------------------------------------
    def reference_vector(self, i: int, p: torch.Tensor) -> torch.Tensor:
        """The vector whose alignment with the true gradient is logged (momentum, or this step's z)."""
        return self.direction(i, p) if self.momentum is None else self.momentum[i].float()

    def state_dict(self) -> dict:
        return {"name": self.name, "d": self.d, "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name or state.get("d") != self.d:
            raise ZOError(
                f"checkpoint holds optimizer {state.get('name')} over {state.get('d')} parameters, "
                f"this run uses {self.name} over {self.d}: use a fresh output folder or resume=false"
            )
        for buf, saved in zip(self.momentum or [], state["momentum"] or [], strict=True):
            buf.copy_(saved)

    def momentum_dtype(self, p: torch.Tensor) -> torch.dtype:
        return p.dtype if self.cfg.momentum_dtype == "param" else DTYPES[self.cfg.momentum_dtype]
