"""Data-parallel ZO step time: 1 rank against N ranks (torchrun) on the same global batch and shards.

Both runs use one thread per process (torchrun's default, OMP_NUM_THREADS=1), so the N-rank run has
N times the cores of the 1-rank run: the figure is what the extra cores buy with the all-reduce
of a few floats per step, not a thread-count comparison. The step time is the runs' own median
`s_per_step` from summary.json. The two runs must also agree: the script checks that their
trajectory logs are byte-for-byte equal, as tests/test_distributed.py does.

    python bench/data_parallel.py                     # SmolLM2-135M, batch 8, 2 ranks, 12 steps
    python bench/data_parallel.py --ranks 2 --steps 6 --model tiny-llama --task sst2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(prefix: list[str], out: Path, args: argparse.Namespace) -> dict:
    overrides = [f"model={args.model}", f"task={args.task}", f"train.steps={args.steps}",
                 f"train.batch_size={args.batch}", f"train.shards={args.ranks}", "train.eval_samples=8",
                 "train.dev_samples=0", "log.wandb=disabled", "save.model=false", "optimizer=conmezo",
                 f"hydra.run.dir={out}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*prefix, str(ROOT / "launch.py"), *overrides], env=env, capture_output=True, text=True
    )
    if proc.returncode:
        sys.exit(f"error: {' '.join(prefix)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--task", default="sst2_review")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "data_parallel.json")
    args = parser.parse_args()
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.ranks}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        one = run([sys.executable], Path(tmp) / "one", args)
        many = run(torchrun, Path(tmp) / "many", args)
        logs = [(Path(tmp) / name / "trajectory.bin").read_bytes() for name in ("one", "many")]
        same = logs[0] == logs[1]
    result = {
        "model": args.model,
        "task": args.task,
        "batch": args.batch,
        "shards": args.ranks,
        "steps": args.steps,
        "s_per_step_1_rank": one["s_per_step"],
        f"s_per_step_{args.ranks}_ranks": many["s_per_step"],
        "ratio": many["s_per_step"] / one["s_per_step"],
        "trajectories_equal": same,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one thread per rank",
        "date": str(date.today()),
    }
    print(
        f"{args.model}, batch {args.batch} in {args.ranks} shards, {args.steps} steps, one thread per process"
    )
    print(f"  1 rank:  {one['s_per_step']:.3f} s/step")
    print(f"  {args.ranks} ranks: {many['s_per_step']:.3f} s/step  ({result['ratio']:.2f}× the 1-rank time)")
    print(f"  trajectories byte-for-byte equal: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
