"""Cost of one noise draw on CPU, compiled as the optimizers run it: ns per entry of z.

Rows: the Gaussian draw's versions (zo.noise: 1, every run logged before versions; 2, what new runs
draw), the Rademacher draw, and two rejected designs for reference. The paired Box–Muller (entries
2j and 2j+1 share hash(j): cos and sin of one angle, one log) halves the hashing and the logs only
if one loop iteration writes both entries; inductor's C++ backend gives each output its own loop
(and an elementwise kernel recomputes per entry), so neither form saves anything: "pair,
elementwise" computes z_i from hash(i >> 1) with the angle shifted by π/2 on odd i, "pair, two
outputs" returns r·cos and r·sin of n/2 hashes.

Columns: "draw" writes the n entries into a tensor; "update" is MeZO's update, x ← x − η·p·z in
place in one pass over fp32 weights (zo.optim.mezo.mezo_step). Each is compiled (torch.compile, as
optimizer.fused=true) and timed `--reps` times, the rows interleaved, in one process, so that a
machine shared with other jobs slows all of them alike; the table gives medians. Wall-clock time is
what a step pays; thread CPU time (one thread, the default) is the compute itself, which contention
barely moves. The eager columns (optimizer.fused=false, the draw in pieces of 2²⁰) are one rep.

    python bench/draw.py             # prints the table, writes bench/results/draw-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from zo.fused import kernel
from zo.noise import _hash, _shr, _unit24, normal_at, normal_v1_at, positions, rademacher_at
from zo.optim.mezo import mezo_step

CPU = torch.device("cpu")


def pair_elementwise(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Rejected: the paired Box–Muller written per entry (each entry hashes i >> 1 and takes its log)."""
    bits = _hash(idx >> 1, seed)
    u1 = _unit24(_shr(bits, 40)) + 2.0**-25
    u2 = _unit24(bits & 0xFFFFFF)
    odd = (idx & 1).to(torch.int32).float()
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2 - (math.pi / 2) * odd)


def pair_two_outputs(idx: torch.Tensor, seed: int) -> torch.Tensor:
    """Rejected: one hash per pair, r·cos and r·sin as two outputs (interleaved by torch.stack)."""
    bits = _hash(idx[0::2] >> 1, seed)  # pair j = i >> 1 (idx: a contiguous stretch from an even start)
    u1 = _unit24(_shr(bits, 40)) + 2.0**-25
    u2 = _unit24(bits & 0xFFFFFF)
    r, theta = torch.sqrt(-2.0 * torch.log(u1)), (2.0 * math.pi) * u2
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1).view(-1)


# (row, draw function, the draw's name as the kernels take it; None: no update row for it)
DRAWS = [
    ("gaussian v1", normal_v1_at, "gaussian@1"),
    ("gaussian v2", normal_at, "gaussian"),
    ("rademacher", rademacher_at, "rademacher"),
    ("pair, elementwise (rejected)", pair_elementwise, None),
    ("pair, two outputs (rejected)", pair_two_outputs, None),
]
COLUMNS = ("draw", "update")


def drawing(draw):
    """`(out, start, seed)`: out ← the draw over positions start .. start+len(out)−1, the indices made
    inside the function as the optimizers' kernels make them (zo.optim.base.index_of), so that
    compiled they fuse into the loop instead of being read from memory. Into a tensor allocated once:
    a fresh 64 MiB output would add the kernel's page faults (~1 ns an entry) to every row."""

    def fill(out: torch.Tensor, start: int, seed: int) -> None:
        out.copy_(draw(positions(start, out.numel(), CPU), seed))

    fill.__name__ = f"fill_{draw.__name__}"
    return fill


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, thread CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn(*args)
    return time.perf_counter() - wall, time.thread_time() - cpu


def measure(n: int, reps: int) -> list[dict]:
    """One row per draw: median ns per entry of each column (wall and thread CPU), eager once."""
    x, out = torch.randn(n), torch.empty(n)
    update = kernel(mezo_step, fused=True)
    jobs = {(name, "draw"): (kernel(drawing(fn), fused=True), lambda s: (out, 0, s)) for name, fn, _ in DRAWS}
    jobs |= {
        (name, "update"): (update, lambda s, d=draw: (x, 0, s, d, 0, 1.0, 1e-9, False))
        for name, _, draw in DRAWS
        if draw
    }
    for fn, call in jobs.values():  # compile, warm
        for seed in (1, 2):
            fn(*call(seed))
    times: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in jobs}
    for rep in range(reps):
        for key, (fn, call) in jobs.items():
            times[key].append(timed(fn, *call(10 + rep)))
    rows = []
    for name, fn, draw in DRAWS:
        row: dict = {"draw": name}
        for column in COLUMNS:
            if (name, column) in times:
                walls, cpus = zip(*times[name, column], strict=True)
                row[f"{column}_ns"] = statistics.median(walls) / n * 1e9
                row[f"{column}_cpu_ns"] = statistics.median(cpus) / n * 1e9
        if draw:
            row["eager_ns"], row["eager_cpu_ns"] = (t / n * 1e9 for t in timed(drawing(fn), out, 0, 3))
        row["draw_to_v1"] = row["draw_cpu_ns"] / rows[0]["draw_cpu_ns"] if rows else 1.0
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--log2n", type=int, default=24, help="entries per draw: 2^log2n")
    parser.add_argument("--reps", type=int, default=9, help="timed reps per row and column (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time counts one)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/draw-cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(1 << args.log2n, args.reps)
    capability = torch.backends.cpu.get_cpu_capability()
    machine = f"{platform.machine()} CPU ({capability}), {args.threads} thread(s)"
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ns per entry of z, n = 2^{args.log2n}, {machine}, torch {torch.__version__}")
    heads = ("draw", "compiled", "CPU time", "÷ v1 (CPU)", "update x−ηpz", "CPU time", "eager", "CPU time")
    for col in heads:
        table.add_column(col)
    keys = ("draw_ns", "draw_cpu_ns", "draw_to_v1", "update_ns", "update_cpu_ns", "eager_ns", "eager_cpu_ns")
    for r in rows:
        table.add_row(r["draw"], *(f"{r[k]:.2f}" if k in r else "–" for k in keys))
    Console(width=150).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "torch": torch.__version__, "date": str(date.today()),
              "n": 1 << args.log2n, "reps": args.reps, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
