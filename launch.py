"""Entry point: `python launch.py [group=option ...] [key=value ...] [-m]`.

Hydra composes conf/config.yaml with the groups optimizer, model, task and
schedule; zo.runner does the rest. Three things happen before Hydra sees argv:
- `-m/--multirun` may stand anywhere (Hydra's parser rejects overrides on both
  sides of it, but `... task=trec -m optimizer.theta=1.2,1.35` is what people type);
- an unknown group option (`optimizer=adam`, also inside a sweep: `choice(mezo,adam)`,
  `mezo,adam`, a `glob` that matches nothing) is a one-line error with exit code 2 that
  lists the choices, instead of Hydra's multi-line one. So are Hydra's own errors about the
  command line (a typo'd key, a value the shell split, a value outside the grammar: zo.overrides);
- a mapping with quoted keys, as JSON writes it (`'task.label_words={"0": " bad", "-1": " good"}'`),
  loses the quotes Hydra's grammar refuses (`{0: " bad", -1: " good"}`).
In a sweep (-m), a job whose config is invalid or whose run fails prints its one line
and the sweep goes on; the sweep then exits with code 1, naming the failed jobs. In an
Optuna search (+sweeps=tune) a diverged trial is an answer, not a failure: it does not
set the exit code.
"""

from __future__ import annotations

import os
import re
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


SEARCH: list[Path] = []  # the command line's own config folders (hydra.searchpath=[file://DIR, ...])


def options(group: str) -> list[str]:
    folders = [ROOT / "sweeps" if group == "sweeps" else CONF / group, *(d / group for d in SEARCH)]
    return sorted({p.stem for f in folders for p in f.glob("*.yaml") if not p.stem.startswith("_")})


def search_items(args: list[str]) -> list[str]:
    """The entries of the command line's `hydra.searchpath=[...]` overrides (file://DIR, pkg://...)."""
    items = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            items += [item.strip().strip("'\"") for item in value.strip("[]").split(",") if item.strip()]
    return items


def picked(arg: str) -> tuple[str, list[str]] | None:
    """The config group an override sets and every option it picks (all of a sweep's), or None where
    it sets no group, or where Hydra will judge the value itself (interval, a syntax error)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob, RangeSweep

    try:
        override = OverridesParser.create().parse_override(arg)
    except Exception:  # Hydra reports its own syntax errors, with the position
        return None
    group, value = override.key_or_group, override.value()
    if group not in GROUPS or override.is_delete():
        return None
    if isinstance(value, Glob):
        return group, value.filter(options(group)) or [arg.partition("=")[2]]
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return group, [str(v) for v in override.sweep_string_iterator()]
    return (group, [value]) if isinstance(value, str) else None


QUOTED_KEY = re.compile(r"""([{,]\s*)(["'])([^"'{},:]*)\2\s*:""")


def unquoted_keys(arg: str) -> str:
    """`key={"0": a, "-1": b}` as Hydra's grammar takes it, `key={0: a, -1: b}`, where it parses only
    that way (a key that cannot go unquoted, a space say, is left to zo.overrides' one line)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, _, value = arg.partition("=")
    if not value.startswith("{") or not QUOTED_KEY.search(value):
        return arg
    parser = OverridesParser.create()
    for candidate in (arg, key + "=" + QUOTED_KEY.sub(r"\1\3:", value)):
        try:
            parser.parse_override(candidate)
            return candidate
        except Exception:  # Hydra's grammar: no quoted mapping keys
            continue
    return arg


def check_groups(args: list[str]) -> None:
    for arg in args:
        found = picked(arg)
        if found is None:
            continue
        group, chosen = found
        for choice in chosen:
            if choice not in options(group):
                fail(f"unknown {group} '{choice}'; choose one of: {', '.join(options(group))}", 2)


NAME_MAX = 255  # bytes in one file name (ext4, xfs, APFS)


def longest_job_folder(args: list[str]) -> int:
    """Length of the longest job folder a `+sweeps=` preset's sweep would create: the presets name a job
    by all its overrides (${hydra.job.override_dirname}), the preset's grid and the command line's, each
    sweep at its longest value. 0 without a preset, or where the command line names the folders itself."""
    from omegaconf import OmegaConf

    preset = next((a.partition("=")[2] for a in args if a.startswith("+sweeps=")), None)
    if preset is None or any(a.startswith("hydra.sweep.subdir=") for a in args):
        return 0
    path = ROOT / "sweeps" / f"{preset}.yaml"
    preset_cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
    hydra = preset_cfg.get("hydra", {})
    if "override_dirname" not in str(hydra.get("sweep", {}).get("subdir", "")):
        return 0  # this preset numbers its job folders
    grid = hydra.get("sweeper", {}).get("params")
    keys = {str(k): str(v) for k, v in (grid or {}).items()}
    for arg in args:
        key, _, value = arg.partition("=")
        if value and not key.startswith(("hydra.", "hydra/")):
            keys[key] = value
    longest = [f"{k}={max(v.split(','), key=len)}" for k, v in keys.items()]
    return len(",".join(sorted(longest)).encode())


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
    # A user's own config folders: their `task/mytask.yaml` is an option like the shipped ones. Hydra
    # takes one searchpath, so theirs joins the repo root (which holds sweeps/) in a single override.
    items = search_items(rest)
    SEARCH[:] = [Path(i.removeprefix("file://")).expanduser() for i in items if i.startswith("file://")]
    rest = [unquoted_keys(a) for a in rest if a.partition("=")[0].lstrip("+") != "hydra.searchpath"]
    check_groups(rest)
    if ("-m" in flags or "--multirun" in flags) and (length := longest_job_folder(rest)) > NAME_MAX:
        fail(
            f"this sweep would name a job folder by all its overrides, {length} characters (a file name "
            f"may have {NAME_MAX}): name the folders by what varies, e.g. "
            "hydra.sweep.subdir='${optimizer.name}', or put the fixed overrides in a config of your own",
            2,
        )
    return flags + rest + torchrun_dirs(rest) + [f"hydra.searchpath=[{','.join([f'file://{ROOT}', *items])}]"]


def torchrun_dirs(args: list[str]) -> list[str]:
    """Under torchrun every rank must use one run folder (rank 0 writes it): without a hydra.run.dir,
    one named by the torchrun job's id; ranks > 0 keep Hydra's own files out of it."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return []
    extra = [] if int(os.environ.get("RANK", "0")) == 0 else ["hydra.output_subdir=null"]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        extra.append(f"hydra.run.dir=outputs/torchrun/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}")
    return extra


FAILED: list[str] = []  # jobs of this (local) sweep that failed, for the exit code at the end


@hydra.main(config_path=str(CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from data import DataError
    from zo import Diverged, ZOError
    from zo.config import ConfigError, validate

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        validate(cfg, hydra_cfg.overrides.task)
    except ConfigError as err:
        if multirun:  # one invalid grid point fails as its own job; the others run
            return job_failed(out_dir, err)
        fail(str(err), 2)
    with open_dict(cfg):
        cfg.overrides = list(hydra_cfg.overrides.task)
    from zo.runner import run
    from zo.tracking import print_summary

    try:
        summary = run(cfg, out_dir)
    except (ZOError, DataError) as err:
        if multirun and isinstance(err, Diverged) and "optuna" in str(hydra_cfg.sweeper.get("_target_")):
            print(
                f"error: {out_dir}: {err} (the search scores it as failed and goes on)",
                file=sys.stderr,
            )
            return None  # a search's answer (this setting diverges), not a failed job
        if multirun:  # one failed job must not take the rest of the sweep down
            return job_failed(out_dir, err)
        fail(str(err), 1)
    print_summary(summary)
    if summary["status"] == "interrupted":  # in a sweep too: Ctrl-C stops the sweep, not one job
        fail(summary["error"], 130)
    final = summary.get("final") or {}
    # What a sweeper optimises (Optuna, +sweeps=tune): the dev metric where there is a dev split.
    return final.get(f"dev_{summary['metric']}", final.get(summary["metric"]))


def job_failed(out_dir: Path, err: Exception) -> None:
    print(f"error: {out_dir}: {err}", file=sys.stderr)
    FAILED.append(str(out_dir))


if __name__ == "__main__":
    sys.argv = sys.argv[:1] + prepare_argv(sys.argv[1:])
    full_errors = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra's own errors reach us as exceptions, told in one line
    try:
        main()
    except KeyboardInterrupt:  # before the run installed its handlers (imports, Hydra's setup)
        fail("interrupted before the run started; nothing was written", 130)
    except Exception as err:
        from zo.overrides import one_line

        line = None if full_errors else one_line(err, sys.argv[1:])
        if line is None:
            raise
        fail(line, 2)
    if FAILED:
        fail(f"{len(FAILED)} job(s) of the sweep failed (their errors are above): {', '.join(FAILED)}", 1)
