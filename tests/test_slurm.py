"""Jobs submitted through hydra-submitit-launcher to a real (local, single-node) Slurm: a θ sweep as an
array, and a data-parallel job of 2 tasks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable, local_slurm
from tests.test_distributed import ARGS as DP_ARGS
from tests.test_distributed import launch, rows

pytestmark = pytest.mark.slurm
THETAS = (1.2, 1.35, 1.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    try:
        with local_slurm(tmp_path_factory.mktemp("slurm")) as running:
            yield running
    except SlurmUnavailable as why:
        pytest.skip(str(why))


def test_sbatch_runs_a_job_on_the_node(cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "step.out"
    job = cluster.run(
        "sbatch", "--parsable", f"--output={out}", "--wrap", "srun printenv SLURMD_NODENAME"
    ).strip()
    cluster.wait(job)
    assert out.read_text().strip() == cluster.node  # ran as a job step (srun) on the node


# The repo's GPU preset too, scaled down to this node: no GPU, 1 GB, one core per job.
LAUNCHERS = {
    "submitit_slurm": [],
    "slurm_gpu": ["hydra.launcher.gpus_per_node=null", "hydra.launcher.mem_gb=1"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_theta_sweep_runs_as_a_slurm_array(cluster: SlurmCluster, tmp_path: Path, launcher: str) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "optimizer=conmezo",
        "task=quadratic",
        "model=quadratic",
        "train.steps=20",
        "log.wandb=disabled",
        "optimizer.fused=false",  # each job is a fresh process: compiling would dominate it
        "-m",
        "optimizer.theta=" + ",".join(map(str, THETAS)),
        f"hydra/launcher={launcher}",
        *LAUNCHERS[launcher],
        f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.cpus_per_task=1",
        f"hydra.sweep.dir={sweep}",
    ]
    # The compute node is this machine: the job runs the same venv python (submitit records
    # sys.executable) with the submitting environment, in the submission cwd. The job starts as
    # `python -m submitit.core._submit`, so `zo` and `data` import from that cwd (or an install):
    # submit from the repo root, as people do.
    cmd = [sys.executable, str(ROOT / "launch.py"), *args]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"sweep did not finish in {err.timeout}s\n{_job_logs(sweep)}\n{cluster.logs()}")
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{_job_logs(sweep)}\n{cluster.logs()}"

    summaries = [json.loads(p.read_text()) for p in sorted(sweep.rglob("summary.json"))]
    assert [s["status"] for s in summaries] == ["finished"] * 3
    assert sorted(s["config"]["optimizer"]["theta"] for s in summaries) == list(THETAS)
    assert all(s["step"] == 20 and s["config"]["optimizer"]["name"] == "conmezo" for s in summaries)
    assert len(list((sweep / ".submitit").rglob("*_result.pkl"))) == 3  # each came back through Slurm


def _job_logs(sweep: Path) -> str:
    """submitit's per-task stdout/stderr: where a job's own traceback ends up."""
    logs = sorted((sweep / ".submitit").rglob("*_log.*")) if sweep.exists() else []
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs)


def test_two_slurm_tasks_run_data_parallel_and_equal_one_rank(
    cluster: SlurmCluster, tmp_path: Path, needs_shared
) -> None:
    """One job of 2 tasks (`tasks_per_node=2`): submitit's SLURM_* become torch.distributed's, the
    two ranks split each batch, and the run equals the 1-rank run on the same shards byte for byte."""
    one, sweep = tmp_path / "one", tmp_path / "sweep"
    launch([sys.executable], one)  # the reference: 1 rank, 2 shards, one thread
    args = [
        *DP_ARGS,
        "-m",
        "hydra/launcher=slurm_gpu",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5",
        f"hydra.launcher.partition={cluster.partition}",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**cluster.env, "OMP_NUM_THREADS": "1"}  # as the reference: reduction order follows threads
    cmd = [sys.executable, str(ROOT / "launch.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n{_job_logs(sweep)}\n{cluster.logs()}"
    (two,) = [p.parent for p in sweep.rglob("summary.json")]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["ranks"] == 2, summary
    assert rows(two) == rows(one) and len(rows(one)) == 5
    for name in ("trajectory.bin", "model/model.safetensors"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    logs = _job_logs(sweep)
    assert "_0_log.out" in logs and "_1_log.out" in logs  # both tasks ran, as tasks of one job
