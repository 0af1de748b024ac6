"""Entry point: `python launch.py [group=option ...] [key=value ...] [-m]`.

Hydra composes conf/config.yaml with the groups optimizer, model, task and
schedule; zo.runner does the rest. Two things happen before Hydra sees argv:
- `-m/--multirun` may stand anywhere (Hydra's parser rejects overrides on both
  sides of it, but `... task=trec -m optimizer.theta=1.2,1.35` is what people type);
- an unknown group option (`optimizer=adam`) is a one-line error with exit code 2
  that lists the choices, instead of Hydra's multi-line one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parent
CONF = ROOT / "conf"
GROUPS = ("optimizer", "model", "task", "schedule", "sweeps")
# Hydra flags that take the next word as their value; every other word starting with "-" is a bare flag.
VALUED = {
    "-c",
    "--cfg",
    "-p",
    "--package",
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
}
INFO = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # optional value of --info


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def options(group: str) -> list[str]:
    folder = ROOT / "sweeps" if group == "sweeps" else CONF / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def check_groups(args: list[str]) -> None:
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        for choice in value.split(","):
            if choice not in options(key):
                fail(f"unknown {key} '{choice}'; choose one of: {', '.join(options(key))}", 2)


def prepare_argv(args: list[str]) -> list[str]:
    """Flags (with their values) first, then overrides, then the repo root on Hydra's search path."""
    flags: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        takes_value = word in VALUED or (word == "--info" and i + 1 < len(args) and args[i + 1] in INFO)
        if not word.startswith("-"):
            rest.append(word)
        elif word not in flags:  # `-m` typed twice is still one multirun
            flags += args[i : i + 2] if takes_value else [word]
        i += 2 if takes_value else 1
    check_groups(rest)
    return flags + rest + [f"hydra.searchpath=[file://{ROOT}]"]


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from data import DataError
    from zo import ZOError
    from zo.config import ConfigError, validate

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    try:
        validate(cfg)
    except ConfigError as err:
        fail(str(err), 2)
    with open_dict(cfg):
        cfg.overrides = list(hydra_cfg.overrides.task)
    from zo.runner import run
    from zo.tracking import print_summary

    try:
        summary = run(cfg, Path(hydra_cfg.runtime.output_dir))
    except (ZOError, DataError) as err:
        if multirun:  # one failed job must not take the rest of the sweep down
            print(f"error: {err}", file=sys.stderr)
            return None
        fail(str(err), 1)
    print_summary(summary)
    if summary["status"] == "interrupted" and not multirun:
        fail(summary["error"], 130)
    final = summary.get("final") or {}
    return final.get(summary["metric"])


if __name__ == "__main__":
    sys.argv = sys.argv[:1] + prepare_argv(sys.argv[1:])
    main()
