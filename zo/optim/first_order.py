"""First-order baselines (doc §6): backprop through the runner's objective, stepped by torch.optim.

They answer what the ZO methods are compared against (the paper's AdamW column, and its memory:
weights + gradients + the method's state + the activations of a backward pass), so they run in
the same loop as the ZO methods, with the same batches, logging, checkpoints and `model.trainable`.
A step is one forward with a backward pass:

    loss_at(Probe(0.0, grad=True))     # the runner's mean_loss with backward: .grad holds ∇f(x)
    estimate: ‖∇f‖ is logged as `projected_grad` (there is no projection; this is its analogue)
    update:   torch.optim steps with this step's lr, then the gradients are freed (set_to_none)

Nothing is perturbed, so these classes do not inherit ZOOptimizer's hooks, flat buffers or
noise: they provide only what the runner, the checkpoint and the tests call. Choices:

- The model stays in eval mode, as the runner sets it for every method: dropout is off, so the
  baseline trains the same network the ZO methods do (typical fine-tuning recipes keep dropout on).
- Weight decay follows `zo.flat`: it applies to matrices and embeddings (p.ndim >= 2), not to
  biases and norm weights, via two torch.optim parameter groups.
- `optimizer.fused=true` uses torch.optim's fused step (one kernel over all tensors, no per-tensor
  temporaries); `false` its per-tensor loop (foreach off), whose transient is one tensor.
- Low-precision weights are refused: torch.optim steps in the weights' dtype with no fp32 master
  copy and no loss scaling, so in bf16 an update of ~lr rounds away and in fp16 gradients
  underflow (and Adam's δ = 1e-8 is 0). The baselines run with model.dtype=fp32.
- Alignment (`log.align_every`) compares the true gradient with the method's momentum, the
  quantity ConMeZO's alignment logs: Adam's first moment m, SGD's momentum buffer. It is measured
  on the step's own batch, whose gradient that momentum already holds with weight (1 − β).
- State is torch.optim's per-parameter state (tensors only), keyed by the parameter's position
  in `params`; the parameter groups are rebuilt from the config, and lr is set every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from zo import ZOError
from zo.optim.base import OptimConfig, Probe

GRADIENT = (Probe(0.0, grad=True),)  # one forward at x itself, with a backward pass
LOW_PRECISION = (torch.float16, torch.bfloat16)


class FirstOrder:
    """A torch.optim optimizer behind the runner's interface; subclasses say which one (`make`)."""

    name: ClassVar[str]
    Config: ClassVar[type[OptimConfig]] = OptimConfig
    uses_beta: ClassVar[bool] = False  # no β warm-up: β₁ / momentum are fixed keys
    supports_queries: ClassVar[bool] = False
    momentum_key: ClassVar[str]  # the torch.optim state entry that is the method's momentum

    def __init__(self, model: nn.Module, cfg: OptimConfig, seed: int) -> None:
        """`seed` is unused: a first-order step draws nothing (the batch is the runner's)."""
        self.cfg = cfg
        self.params: list[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ZOError("the model has no trainable parameters: check model.trainable")
        low = sorted({str(p.dtype).removeprefix("torch.") for p in self.params if p.dtype in LOW_PRECISION})
        if low:
            raise ZOError(
                f"optimizer={self.name} steps torch.optim in the weights' dtype ({', '.join(low)}) with no "
                "fp32 master copy or loss scaling, so updates round away or underflow: use model.dtype=fp32"
            )
        self.d = sum(p.numel() for p in self.params)
        self.projected_grad = 0.0
        split = (
            ([p for p in self.params if p.ndim >= 2], cfg.weight_decay),
            ([p for p in self.params if p.ndim < 2], 0.0),
        )
        groups = [{"params": ps, "weight_decay": wd} for ps, wd in split if ps]
        self.torch = self.make(groups, {"fused": True} if cfg.fused else {"foreach": False})
        # torch.optim numbers its state by position over the groups; the checkpoint uses `params`
        order = [p for g in self.torch.param_groups for p in g["params"]]
        self._torch_index = {id(p): j for j, p in enumerate(order)}

    def make(self, groups: list[dict], impl: dict[str, bool]) -> torch.optim.Optimizer:
        """The torch.optim optimizer over `groups` (each with its weight_decay), `impl` its kernel choice."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop gradients an interrupted step left behind; nothing else is installed on the model."""
        self.torch.zero_grad(set_to_none=True)

    # ---- one step ---------------------------------------------------------------------------
    def step(self, t: int, loss_at: Callable[[Probe], float], lr: float, beta: float | None) -> list[float]:
        """Step t: the forward and backward (`loss_at` with a grad probe), ‖∇f‖, the torch.optim step."""
        losses = [loss_at(probe) for probe in self.probes()]
        self.estimate(losses)
        self.update(lr, beta)
        return losses

    def probes(self) -> Sequence[Probe]:
        return GRADIENT

    def logged_loss(self, losses: Sequence[float]) -> float:
        return losses[0]

    def estimate(self, losses: Sequence[float]) -> float:
        """‖∇f‖ over the trainable parameters, logged as `projected_grad`; stops on a non-finite value."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            raise ZOError(
                "no gradient reached the trainable parameters: the loss does not depend on them "
                "(check model.trainable)"
            )
        first = grads[0].device  # a device map spreads the gradients over devices
        norms = [torch.linalg.vector_norm(g).to(first) for g in grads]
        norm = float(torch.linalg.vector_norm(torch.stack(norms)))
        if not (all(math.isfinite(v) for v in losses) and math.isfinite(norm)):
            raise ZOError(
                f"loss is not finite (loss {losses[0]:.6g}, gradient norm {norm:.6g}); lower optimizer.lr "
                "or use model.dtype=fp32; the last checkpoint and metrics are kept"
            )
        self.projected_grad = norm
        return norm

    def update(self, lr: float, beta: float | None) -> None:
        """One torch.optim step at this step's lr; the gradients are freed, not zeroed, so the next
        forward runs without them (the peak is activations + gradients only during the backward)."""
        for group in self.torch.param_groups:
            group["lr"] = lr
        self.torch.step()
        self.torch.zero_grad(set_to_none=True)

    # ---- alignment and state ------------------------------------------------------------------
    def reference_vector(self, i: int) -> torch.Tensor:
        """Parameter i's momentum (zeros before its first step), as fp32: what alignment compares."""
        p = self.params[i]
        m = self.torch.state.get(p, {}).get(self.momentum_key)  # .get: the state is a defaultdict
        return torch.zeros_like(p, dtype=torch.float32) if m is None else m.float()

    def state_dict(self) -> dict[str, Any]:
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {str(index[id(p)]): dict(entry) for p, entry in self.torch.state.items()}
        return {"name": self.name, "d": self.d, "state": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or state.get("d") != self.d:
            raise ZOError(
                f"checkpoint holds optimizer {state.get('name')} over {state.get('d')} parameters, "
                f"this run uses {self.name} over {self.d}: use a fresh output folder or force=true"
            )
        saved: dict[str, dict[str, torch.Tensor]] = state["state"]
        for key, entry in saved.items():
            shape = self.params[int(key)].shape
            if any(v.ndim and v.shape != shape for v in entry.values()):
                raise ZOError(
                    f"checkpoint's optimizer state for parameter {key} does not fit its shape "
                    f"{tuple(shape)}: use a fresh output folder or force=true"
                )
        position = {key: self._torch_index[id(self.params[int(key)])] for key in saved}
        self.torch.load_state_dict(
            {
                "state": {position[key]: entry for key, entry in saved.items()},
                "param_groups": self.torch.state_dict()["param_groups"],
            }
        )
