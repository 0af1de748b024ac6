"""Where the model runs: one device (`train.device`), or spread over several by an accelerate device map.

A model larger than one GPU is split by `model.device_map` (`auto`, or {module name: device}) and
dispatched by accelerate, whose hooks move the activations from one module's device to the next.
Nothing else in the runner changes: `FlatParams` already keeps one buffer per (device, dtype), each
block is perturbed on its own device by the kernel compiled for it, and the noise is a function of
(seed, flat index) alone, so a split run draws the same z as an unsplit one. The optimizers' few
sums over buffers (ConMeZO's ‖m‖, ‖n‖) gather their per-buffer partial sums on one device first
(`zo.optim.base.Single.total`).

What a map may not do: offload weights to disk, or to CPU as storage that accelerate copies to a GPU
for each forward. ZO perturbs and updates the weights in place, so every weight must live where it
is computed on; a "cpu" entry therefore runs on the CPU (accelerate's main device is then the CPU,
which turns its offloading off).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from zo import ZOError


def pick_device(name: str) -> torch.device:
    """train.device: auto (a GPU if one is visible), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ZOError(f"train.device={name} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ZOError(f"train.device={name} but no CUDA device is visible; use train.device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise ZOError(
                f"train.device={name} but {count} CUDA device(s) are visible: use cuda:0..cuda:{count - 1}"
            )
    return device


def _entry(module: str, value: object) -> int | str:
    """One map value as accelerate takes it: a GPU index, or "cpu"."""
    text = str(value).strip()
    if text == "cpu":
        return "cpu"
    if text == "disk":
        raise ZOError(
            f"model.device_map puts {module or 'the model'} on disk: offloaded weights cannot be perturbed "
            'in place; use more GPUs, "cpu" (runs those modules on the CPU) or a smaller model.dtype'
        )
    index = text.removeprefix("cuda:")
    if not index.isdigit():
        raise ZOError(
            f"model.device_map: {module}: {value!r} is not a device: use a GPU index (0, 1, ...) or cpu"
        )
    count = torch.cuda.device_count()
    if int(index) >= count:
        raise ZOError(
            f"model.device_map puts {module} on cuda:{index} but {count} CUDA device(s) are visible: "
            "use model.device_map=auto or indices below that"
        )
    return int(index)


def device_map(model: nn.Module, spec: str | dict, max_memory: dict | None) -> dict[str, int | str]:
    """The map to dispatch by: accelerate's own for `auto` (fills GPUs in order, then the CPU, within
    max_memory, never splitting a module class the model marks as unsplittable), else `spec` checked."""
    if spec == "auto":
        from accelerate import infer_auto_device_map

        keep_whole = getattr(model, "_no_split_modules", None) or []
        inferred = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=keep_whole)
        return {name: _entry(name, value) for name, value in inferred.items()}
    if not isinstance(spec, dict) or not spec:
        raise ZOError(
            f"model.device_map={spec!r}: use auto or a map of module names to devices, "
            "e.g. model.device_map='{model.embed_tokens: 0, model.layers: 1, model.norm: 1, lm_head: 0}'"
        )
    if max_memory:
        raise ZOError("model.max_memory applies to model.device_map=auto; an explicit map already says where")
    return {str(name): _entry(str(name), value) for name, value in spec.items()}


def place(model: nn.Module, device: torch.device, spec: str | dict | None, max_memory: dict | None) -> None:
    """Move the model to `device`, or dispatch it by a device map (then `device` is not used)."""
    if spec is None:
        model.to(device)
        return
    from accelerate import dispatch_model

    chosen = device_map(model, spec, max_memory)
    # "cpu" entries compute on the CPU: with the CPU as main device accelerate offloads nothing.
    # force_hooks: a map onto one device still goes through accelerate's hooks, as a split one does
    # (so a split map tested on a CPU-only machine exercises the same code).
    main = "cpu" if "cpu" in chosen.values() else None
    quiet = logging.getLogger("accelerate.big_modeling")  # it says "offloaded to the cpu" of any cpu entry
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        dispatch_model(model, device_map=chosen, main_device=main, force_hooks=True)
    except ValueError as err:  # e.g. a map that leaves some parameters without a device
        first = (str(err).strip().splitlines() or ["ValueError"])[0][:240]
        raise ZOError(
            f"model.device_map: accelerate refused it ({first}); name every top-level module, or use auto"
        ) from err
    finally:
        quiet.setLevel(level)


def devices_of(model: nn.Module) -> list[torch.device]:
    """The devices holding the model's parameters, in order of first appearance."""
    seen: dict[torch.device, None] = {}
    for p in model.parameters():
        seen.setdefault(p.device, None)
    return list(seen)
