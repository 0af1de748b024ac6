"""Checkpoints that survive a killed job and a full disk, hold no code, and know their config.

A checkpoint holds what a resumed run needs to continue *exactly*: the trainable
parameters (in ZO full finetuning all of them change), the optimizer's state, the
step, how many bytes of metrics.jsonl belonged to that step (rows written after it
are dropped on resume and produced again), the runner's own bookkeeping (best step,
divergence watch, W&B id), the resolved config it was written under and the version of
the noise draw (zo.noise; a checkpoint without one was written by runs that drew version 1). Batches and
perturbations are pure functions of (seed, step), so no RNG stream needs saving.

The file is safetensors: tensors as raw bytes, everything else as JSON in the header
(`__metadata__["zo"]`), so loading one never runs code (a pickle could). The optimizer's
state is a nested structure; its tensors are stored under path-like keys
(`optimizer/momentum/0`) and the JSON keeps the structure with `{"__tensor__": key}`
in their place. It is written to a temporary file beside the target, fsynced, then
renamed over it (`os.replace`), so a kill or a full disk mid-write leaves the previous
checkpoint whole.

`inspect` decides, before anything loads or is written, what a run may do with its
output folder: resume from the checkpoint (when the trajectory-changing config agrees),
skip a finished run, stop at once as a diverged run diverged again (same guards), start
fresh, or refuse with one line. Nothing is ever deleted:
`force=true` moves the old files into `old-<time>/`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import struct
import sys
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zo import Diverged, ZOError
from zo.overrides import override_key

NAME = "checkpoint.safetensors"
LEGACY = "checkpoint.pt"  # the pickle format of earlier versions: refused, never unpickled
FORMAT = "zo-checkpoint/1"
# What force=true moves aside (the saved model too: a rerun must not leave an old model beside new metrics).
RUN_FILES = ("metrics.jsonl", "summary.json", "config.yaml", NAME, LEGACY, "wandb", "model", "trajectory.bin",
             "trajectory.json", "predictions.jsonl")  # fmt: skip
# The divergence and stall guards: they only decide when to give up on a run, so a resume may tighten or
# loosen them. A diverged run is stopped at once on a rerun with the same guards (its trajectory would
# diverge again); loosened guards resume it from its checkpoint.
GUARDS = ("train.stall_steps", "train.diverge_factor", "train.diverge_eval")
# Keys that may differ between a run and its resume: where and how the run is watched, stored and
# executed, never what it computes. (optimizer.fused runs the same math compiled or eagerly; a device
# map places the same math, whose noise does not depend on where it runs.)
FREE = (
    *GUARDS,
    "log.",
    "ckpt.",
    "save.",
    "resume",
    "force",
    "overrides",
    "train.eval_every",
    "train.eval_batch_size",
    "train.device",
    "model.device_map",
    "model.max_memory",
    "data.root",
    "optimizer.fused",
)
# Keys added after runs were saved, with the value such a run used without them: its config lacks the
# key, and a rerun or resume with that value (the key's default) is the same run.
ADDED = {"optimizer.noise": "gaussian", "train.diverge_eval": 0}
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}  # fmt: skip
TENSOR = "__tensor__"


# ---- the file ---------------------------------------------------------------------------------
def flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` as JSON, each tensor moved into `tensors` under its path and replaced by a reference."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach()
        return {TENSOR: path}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"checkpoint state at {path} has a non-string key: {sorted(map(str, value))[:3]}")
        return {k: flatten(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"checkpoint state at {path} is a {type(value).__name__}: only tensors and JSON values fit"
    )


def unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {TENSOR}:
            return tensors[value[TENSOR]]
        return {k: unflatten(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unflatten(v, tensors) for v in value]
    return value


def write(path: Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    """A safetensors file, streamed one tensor at a time (a GPU model is never copied to the host
    whole), flushed and fsynced before returning. Python's own writes, so a full disk is an OSError."""
    layout: dict[str, Any] = {"__metadata__": {"zo": json.dumps(header)}}
    offset = 0
    for key, t in tensors.items():
        size = t.numel() * t.element_size()
        layout[key] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(layout, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
        for t in tensors.values():
            fh.write(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
        fh.flush()
        os.fsync(fh.fileno())


def read_header(path: Path) -> dict:
    """The checkpoint's JSON, reading no tensor data; ZOError if the file is not a whole checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})["zo"])
    except Exception as err:  # safetensors' own error type, KeyError, JSON errors: all mean unreadable
        raise ZOError(f"{path} is unreadable ({_first_line(err)}): {start_over(path.parent)}") from err
    if header.get("format") != FORMAT:
        raise ZOError(
            f"{path} is not a {FORMAT} checkpoint (format {header.get('format')}): {start_over(path.parent)}"
        )
    return header


def start_over(out_dir: Path) -> str:
    """The fix when a folder's run cannot go on: a fresh run there, the old files kept aside."""
    return f"force=true starts over (the old files move to {out_dir}/old-<time>/)"


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


# ---- save and load ------------------------------------------------------------------------------
def save(out_dir: Path, model: nn.Module, optimizer, step: int, metrics_bytes: int, config: dict,
         runner: dict, mode: str = "full") -> Path:  # fmt: skip
    """Write the checkpoint of `step`: temporary file, fsync, rename, fsync of the folder.

    mode "log" (ckpt.mode=log) writes no tensors, only the header: the weights and the optimizer's
    state at `step` follow from the base model and trajectory.bin, which a resume replays."""
    target = out_dir / NAME
    tmp = out_dir / f".{NAME}.tmp"
    tensors: dict = {}
    state = None
    if mode == "full":
        tensors = {f"params/{n}": p for n, p in model.named_parameters() if p.requires_grad}
        state = flatten(optimizer.state_dict(), "optimizer", tensors)
    header = {
        "format": FORMAT,
        "mode": mode,
        "step": step,
        "noise_version": optimizer.cfg.noise_version,  # zo.noise: a resume draws what the run drew
        "metrics_bytes": metrics_bytes,
        "runner": runner,
        "config": config,
        "optimizer": state,
    }
    try:
        write(tmp, tensors, header)
        os.replace(tmp, target)
        _fsync_dir(out_dir)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise ZOError(
                f"disk full while writing {target}; the previous checkpoint and metrics are intact: "
                "free space and rerun with resume=true in the same folder"
            ) from err
        raise ZOError(f"cannot write checkpoint {target}: {err.strerror}") from err
    return target


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable: a crash right after it must not bring the old name back."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(out_dir: Path, model: nn.Module, optimizer) -> dict:
    """Restore the parameters and the optimizer's state; return the checkpoint's header. A log-mode
    checkpoint restores nothing here: the caller replays the trajectory up to its step."""
    from safetensors import safe_open

    path = out_dir / NAME
    header = read_header(path)
    if header.get("mode") == "log":
        return header
    params = {f"params/{n}": p for n, p in model.named_parameters() if p.requires_grad}
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            saved = {k for k in keys if k.startswith("params/")}
            if saved != set(params):
                extra, missing = sorted(saved - set(params)), sorted(set(params) - saved)
                raise ZOError(
                    f"{path} holds other parameters than this model (only in the checkpoint: "
                    f"{extra[:3]}, only in the model: {missing[:3]}): {start_over(path.parent)}"
                )
            with torch.no_grad():
                for key, p in params.items():
                    value = f.get_tensor(key)
                    if value.shape != p.shape:
                        raise ZOError(f"{path}: {key} has shape {tuple(value.shape)}, the model's is "
                                      f"{tuple(p.shape)}: {start_over(path.parent)}")  # fmt: skip
                    p.copy_(value)
            state = {k: f.get_tensor(k) for k in keys - saved}
    except ZOError:
        raise
    except Exception as err:
        raise ZOError(f"{path} is unreadable ({_first_line(err)}): {start_over(path.parent)}") from err
    try:
        optimizer.load_state_dict(unflatten(header["optimizer"], state))
    except ZOError as err:  # the optimizer says what does not fit; the fix here is starting over
        raise ZOError(f"{path}: {str(err).rpartition(': ')[0] or err}: {start_over(path.parent)}") from err
    return header


# ---- what a run may do with its folder ------------------------------------------------------------
LAUNCH = Path(__file__).resolve().parents[1] / "launch.py"
_NOT_REPEATED = ("resume", "force", "hydra.run.dir")  # set by the resume command itself


@contextmanager
def held(out_dir: Path) -> Iterator[None]:
    """One process at a time in a run folder (an advisory lock on `<run>/.lock`, released when the
    process ends, however it ends). Why: a second launch of the same run (a sweep restarted while the
    first still finishes its step after SIGTERM, a requeued Slurm job overlapping the one before)
    starts over or resumes while the first still writes: the first then appends its last step to
    logs the second has cut, and that step appears twice, so a replay would apply it twice."""
    fh = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise ZOError(
            f"{out_dir} is in use by another process (pid {pid}) running this run: wait for it to end "
            "(or stop it), then run again"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the lock


def resume_command(out_dir: Path, overrides: list[str]) -> str:
    """The command that continues the run in out_dir: its own overrides, its folder, resume=true;
    with absolute paths, so it works when pasted anywhere."""
    kept = [o for o in overrides if override_key(o) not in _NOT_REPEATED]
    return shlex.join([sys.executable, str(LAUNCH), *kept, f"hydra.run.dir={out_dir}", "resume=true"])


@dataclass
class Folder:
    """The output folder as a run finds it: a checkpoint to resume from, a finished run, or neither."""

    header: dict | None = None  # the checkpoint's header: resume from it
    finished: dict | None = None  # the summary of a finished run with the same config: nothing to do
    held_run: bool = False  # it holds an earlier run's files (so a failed setup must not touch them)


def flat_keys(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flat_keys(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: dict, current: dict, compared: Collection[str]) -> list[str]:
    """`key=saved (now current)` for every trajectory-changing key whose value differs.

    `compared`: the top-level keys to compare. The runner passes the schema's
    (`zo.config.SCHEMA_KEYS`), so a sweep may fill in its lookup table (`lr_by_optimizer`) while its
    runs are paused: what a run took from the table is in the key that read it, which is compared.
    A key in `ADDED` that the saved config lacks compares as the value its run used.
    """
    old, new = ADDED | flat_keys(saved), flat_keys(current)
    missing = "(unset)"
    return [
        f"{key}={old.get(key, missing)} (now {new.get(key, missing)})"
        for key in sorted(old.keys() | new.keys())
        if not key.startswith(FREE)
        and key.split(".", 1)[0] in compared
        and old.get(key, missing) != new.get(key, missing)
    ]


def trained_rows(metrics: Path) -> bool:
    """Whether metrics.jsonl holds a training step (step >= 1): more than a rerun reproduces at once."""
    if not metrics.exists():
        return False
    for line in reversed(metrics.read_text().splitlines()):
        try:
            return json.loads(line).get("step", 0) >= 1
        except ValueError:  # a row cut short by a kill
            continue
    return False


def inspect(out_dir: Path, config: dict, compared: Collection[str]) -> Folder:
    """What the run with the resolved `config` may do with `out_dir` (see the module docstring);
    writes nothing, except that force=true moves an earlier run aside. `compared`: see `differences`."""
    resume, force = config["resume"], config["force"]
    present = [name for name in RUN_FILES if (out_dir / name).exists()]
    if force:
        if present:
            moved = move_aside(out_dir, present)
            print(f"force=true: the previous run's files are in {moved}")
        return Folder()
    summary_path, ckpt = out_dir / "summary.json", out_dir / NAME
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    finished = summary.get("status") == "finished"
    held = finished or ckpt.exists() or (out_dir / LEGACY).exists() or trained_rows(out_dir / "metrics.jsonl")
    if not held:
        return Folder(held_run=bool(present))
    where = f"{out_dir} already holds a run"
    if not resume:
        raise ZOError(f"{where}: resume=true continues it; {start_over(out_dir)}")
    saved = summary.get("config", {})
    if finished:
        refuse_if_changed(differences(saved, config, compared), f"{where} (finished) with", out_dir)
        return Folder(finished=summary, held_run=True)
    if (
        summary.get("status") == "diverged"
        and guards(saved) == guards(config)
        and not differences(saved, config, compared)
    ):  # the same run would diverge again; other settings go on to the checkpoint's check below
        raise Diverged(
            f"{out_dir} already diverged at step {summary.get('step')} with these settings: lower "
            "optimizer.lr; loosen train.diverge_factor, diverge_eval or stall_steps to resume it; "
            f"{start_over(out_dir)}"
        )
    if ckpt.exists():
        header = read_header(ckpt)
        command = resume_command(out_dir, header["config"].get("overrides", []))
        changed = differences(header["config"], config, compared)
        refuse_if_changed(changed, f"{ckpt} was written with", out_dir, command)
        return Folder(header=header, held_run=True)
    if (out_dir / LEGACY).exists():
        raise ZOError(
            f"{out_dir / LEGACY} is in the pickle format of earlier versions, which is not loaded "
            f"(unpickling runs code): {start_over(out_dir)}"
        )
    raise ZOError(
        f"{where} ({out_dir / 'metrics.jsonl'} has training rows) but no checkpoint to resume from "
        f"(ckpt.every=N writes one every N steps): {start_over(out_dir)}"
    )


def guards(config: dict) -> dict[str, Any]:
    """The divergence guards `config` ran under (a key added since it was saved: its ADDED value)."""
    flat = ADDED | flat_keys(config)
    return {key: flat.get(key) for key in GUARDS}


def refuse_if_changed(changed: list[str], what: str, out_dir: Path, command: str | None = None) -> None:
    if changed:
        keep = f"resume with its settings: {command}; or " if command else ""
        raise ZOError(f"{what} other settings: {', '.join(changed)}; {keep}{start_over(out_dir)}")


def move_aside(out_dir: Path, names: list[str]) -> Path:
    """Move the named files into a new `old-<time>/` folder of out_dir; never delete anything."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = out_dir / f"old-{stamp}", 1
    while target.exists():
        target, n = out_dir / f"old-{stamp}-{n}", n + 1
    target.mkdir()
    for name in names:
        os.replace(out_dir / name, target / name)
    return target
