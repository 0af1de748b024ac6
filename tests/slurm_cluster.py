"""A real single-node Slurm cluster on this machine, for tests that submit jobs with submitit.

Why a real one: the Slurm launcher path (sbatch script, pickled job, `srun python -m
submitit.core._submit`, array jobs, output folders) only breaks on a real scheduler.
Debian packages it, so a root CI box gets one in seconds.

Everything lives in one private folder: its own munge key and socket, its own ports,
state and spool, and a slurm.conf that clients find through `SLURM_CONF`. Nothing is
read from or written to /etc/slurm or /run/munge, so a system Slurm (if any) is untouched.
The daemons run in the foreground as children of the test process and are stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """This machine cannot host the test cluster (not root, or nothing to install Slurm with)."""


def ensure_installed() -> None:
    """Install Slurm and munge with apt-get when any binary is missing; root only."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local Slurm needs root (slurmd runs jobs as their user)")
    if all(shutil.which(b) for b in BINARIES):
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"Slurm is not installed and there is no apt-get to install {PACKAGES}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a CI box that should have Slurm: fail loudly, do not skip
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> str:
    """CPUs, sockets, cores, threads and memory exactly as slurmd sees them.

    A node configured with more CPUs or memory than slurmd detects is drained at
    registration, so the values come from `slurmd -C` rather than being written by hand.
    """
    out = subprocess.run(["slurmd", "-C"], check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("NodeName="))
    return " ".join(item for item in line.split()[1:] if not item.startswith("UpTime="))


def write_config(root: Path, host: str) -> Path:
    munge_socket = root / "munge.socket"
    conf = {
        "ClusterName": "zotest",
        "SlurmctldHost": f"{host}(127.0.0.1)",
        "SlurmctldPort": free_port(),
        "SlurmdPort": free_port(),
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "slurmctld.log",
        "SlurmdLogFile": root / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",  # no cgroups needed (containers, gVisor)
        "TaskPlugin": "task/none",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",  # memory not consumable: jobs without --mem share the node
        "AccountingStorageType": "accounting_storage/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "JobCompType": "jobcomp/none",
        "MpiDefault": "none",
        "ReturnToService": 2,
        "SchedulerType": "sched/builtin",  # plain FIFO: nothing to backfill on one node
        "SchedulerParameters": "batch_sched_delay=0",  # start batch jobs now, not in 3-second batches
    }
    lines = [f"{key}={value}" for key, value in conf.items()]
    lines.append(f"NodeName={host} NodeAddr=127.0.0.1 {node_hardware()} State=UNKNOWN")
    lines.append(f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    path = root / "slurm.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SlurmCluster:
    """A running cluster: its folder, partition, the client environment (SLURM_CONF) and daemons."""

    root: Path
    node: str
    partition: str
    env: dict[str, str]
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True).stdout

    def start(self, *cmd: str, log: str) -> None:
        out = open(self.root / log, "ab")  # noqa: SIM115 - the daemon owns it until stop()
        self.daemons.append(subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT))
        out.close()

    def logs(self, lines: int = 30) -> str:
        """The tail of every daemon log: what a failed test should print."""
        parts = []
        for log in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")]):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait_idle(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited with {daemon.returncode}\n{self.logs()}")
            probe = subprocess.run(
                ["sinfo", "-h", "-N", "-p", self.partition, "-o", "%t"],
                env=self.env,
                capture_output=True,
                text=True,
            )
            state = probe.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.3)
        raise RuntimeError(f"node not idle after {timeout:.0f}s (state {state!r})\n{self.logs()}")

    def wait(self, job_id: str, timeout: float = 60.0) -> None:
        """Until the job leaves the queue (`sbatch --wait` polls every 2-10 s; this every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            queued = subprocess.run(
                ["squeue", "-h", "-j", job_id], env=self.env, capture_output=True, text=True
            )
            if queued.returncode != 0 or not queued.stdout.strip():  # done, or already purged
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still queued after {timeout:.0f}s\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel leftover jobs, then stop slurmd, slurmctld and munged (in that order) by PID."""
        if any(d.poll() is None for d in self.daemons):
            subprocess.run(
                ["scancel", "--full", f"--partition={self.partition}"], env=self.env, capture_output=True
            )
        for daemon in reversed(self.daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


@contextmanager
def local_slurm(root: Path) -> Iterator[SlurmCluster]:
    """Install if needed, start munged + slurmctld + slurmd under `root`, yield once the node is idle."""
    ensure_installed()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # munged wants its socket folder traversable by everyone
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))  # a private key: this cluster trusts nobody else
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]  # `hostname -s`: the name slurmd registers under
    cluster = SlurmCluster(root, node, PARTITION, {**os.environ, "SLURM_CONF": str(write_config(root, node))})
    try:
        cluster.start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={root / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={root / 'munged.pid'}",
            f"--seed-file={root / 'munged.seed'}",
            f"--log-file={root / 'munged.log'}",
            log="munged.out",
        )
        _wait_for(root / "munge.socket", cluster)
        cluster.start("slurmctld", "-D", "-i", log="slurmctld.out")
        cluster.start("slurmd", "-D", log="slurmd.out")
        cluster.wait_idle()
        yield cluster
    finally:
        cluster.stop()


def _wait_for(path: Path, cluster: SlurmCluster, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never appeared\n{cluster.logs()}")
        time.sleep(0.05)
