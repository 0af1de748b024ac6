"""The trajectory log: a ZO run in a few bytes per step (`trajectory.bin` + `trajectory.json`).

Everything a ZO step does is a function of the config, the step number and its probes' losses:
the step seed is (run seed, step), η and β_t come from the config and the schedule, and every
optimizer's estimate and state update are computed from the losses alone. So the losses, stored
exactly (float64 holds each float32 loss without rounding), are the whole run: `zo.replay`
rebuilds the finetuned weights from the base model and this log, bitwise equal on CPU.

One record per step: uint32 step, uint8 number of probes n, n float64 losses, little-endian;
21 bytes for the two-probe methods (MeZO, its momentum, ConMeZO, MEAZO, ZO-Adam, LOZO), 29 for
HiZOO, 85 for LOREN's K = 10. The header fixes what the bytes mean and what they apply to: the
optimizer, d, the direction's noise (gaussian or rademacher; a header without it is gaussian) and
its draw's version (zo.noise; a header without it is version 1), the model and dtype, the
trainable set. First-order runs write no log (their updates need the gradients). FZOO's N = 8
probes and l_0 take 77 bytes.

Records are appended as steps finish; on resume the log is cut back to the checkpoint's step, so
it always matches the weights that the run continues from.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from zo import ZOError

BIN, HEADER = "trajectory.bin", "trajectory.json"
FORMAT = "zo-trajectory/1"
_HEAD = struct.Struct("<IB")  # step, number of losses
_LOSS = struct.Struct("<d")


class TrajectoryLog:
    def __init__(self, out_dir: Path, header: dict, resume_step: int | None) -> None:
        """Start a log (resume_step None) or keep the records up to resume_step of an existing one."""
        self.path = out_dir / BIN
        if resume_step is None or not self.path.exists():
            self.path.write_bytes(b"")
            (out_dir / HEADER).write_text(json.dumps({"format": FORMAT, **header}, indent=1))
            return
        keep = 0
        for step, _, end in _scan(self.path.read_bytes()):
            if step > resume_step:
                break
            keep = end
        with open(self.path, "r+b") as fh:
            fh.truncate(keep)

    def write(self, step: int, losses: Sequence[float]) -> None:
        record = _HEAD.pack(step, len(losses)) + b"".join(_LOSS.pack(float(v)) for v in losses)
        try:
            with open(self.path, "ab") as fh:
                fh.write(record)
        except OSError as err:
            raise ZOError(f"cannot append to {self.path} ({err.strerror}); free space and resume") from err


def _scan(data: bytes) -> Iterator[tuple[int, list[float], int]]:
    """(step, losses, offset after the record) for each whole record; a torn tail is ignored."""
    at = 0
    while at + _HEAD.size <= len(data):
        step, n = _HEAD.unpack_from(data, at)
        end = at + _HEAD.size + n * _LOSS.size
        if end > len(data):
            return
        losses = [_LOSS.unpack_from(data, at + _HEAD.size + i * _LOSS.size)[0] for i in range(n)]
        yield step, losses, end
        at = end


def read(run_dir: Path) -> tuple[dict, list[tuple[int, list[float]]]]:
    """The header and every (step, losses) of a run folder's log."""
    header_path, bin_path = run_dir / HEADER, run_dir / BIN
    if not header_path.exists() or not bin_path.exists():
        raise ZOError(
            f"{run_dir} has no trajectory log ({HEADER}, {BIN}): it is written by ZO runs of this "
            "version; first-order runs have none"
        )
    header = json.loads(header_path.read_text())
    if header.get("format") != FORMAT:
        raise ZOError(f"{header_path}: format {header.get('format')!r}, expected {FORMAT!r}")
    return header, [(step, losses) for step, losses, _ in _scan(bin_path.read_bytes())]
