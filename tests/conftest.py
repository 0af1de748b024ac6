"""Shared helpers: compose a config like launch.py does, run it in-process or as a real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
# Real-model runs of a minute or more on a 2-core CPU: outside `make test` (CI's 12 minutes), in
# `make test-slow` (ZO_SLOW=1), which runs them beside everything else.
minutes = pytest.mark.skipif(
    os.environ.get("ZO_SLOW") != "1", reason="minutes on CPU: make test-slow runs it"
)
# Small, fast settings for runs on a tiny random model over real SST-2 files. Eager kernels
# (optimizer.fused=false): compiling them costs ~25 s per fresh process, and tests/test_kernels.py
# checks the compiled passes against the eager ones.
TINY = [
    "model=tiny-llama",
    "task=sst2",
    "task.sampling=fixed",
    "task.num_train=64",
    "task.num_dev=8",
    "task.num_test=32",
    "task.max_length=48",
    "train.batch_size=4",
    "train.eval_samples=32",
    "optimizer.lr=1e-3",
    "log.wandb=disabled",
    "optimizer.fused=false",
]
QUAD = [
    "model=quadratic",
    "task=quadratic",
    "log.wandb=disabled",
    "optimizer.lr=1e-3",
    "optimizer.eps=1e-2",
    "optimizer.fused=false",
]


def compose(overrides: list[str]):
    """The config as launch.py's Hydra app gets it: `${hydra:...}` interpolations (task=custom's name
    is its YAML file's, `hydra:runtime.choices.task`) resolve, and the `hydra` node is not in it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_inprocess(overrides: list[str], out_dir: Path) -> dict:
    from zo.config import validate
    from zo.runner import run

    cfg = compose(overrides)
    validate(cfg)
    return run(cfg, out_dir)


def cli(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def read_metrics(path: Path, drop_timing: bool = True) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    if drop_timing:
        for row in rows:
            row.pop("step_time_s", None)
    return rows


@pytest.fixture
def needs_shared() -> Path:
    if not (SHARED / "SST-2" / "train.tsv").exists():
        pytest.skip(f"real datasets not found at {SHARED}")
    return SHARED


def wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline `run-*.wandb` file, read back without the W&B service.

    The file is a 7-byte header then a LevelDB-style log: 32 KiB blocks of records
    (crc32 4 bytes, length 2 bytes little-endian, type 1 byte: 1 full, 2 first,
    3 middle, 4 last) whose payloads are `wandb_internal_pb2.Record` protobufs.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos = run_file.read_bytes(), 32768, 7
    assert raw[:4] == b":W&B"
    rows, pending = [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # no room for a header: the rest of the block is padding
            pos += block - pos % block
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind, data = raw[pos + 6], raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows
