"""Check the composed config before any model or data loads.

A sweep that dies an hour in because θ was typed in degrees wastes a GPU hour;
a one-line error at start-up costs nothing. Every check names the key, the value
and what is allowed.

Each config section is a dataclass (its schema): the field's annotation says the
type (a number, an integer, true or false, one of a few names, a path or null),
and the class's `checks()` says the range, as each optimizer's `Config` does.
`section` applies both, and refuses keys the schema does not know, so a key added
to a YAML file without a field here fails on its first use instead of going
unchecked. Optimizers register their own `Config` (zo.optim).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from zo import ZOError
from zo.models import KINDS, ModelConfig
from zo.optim import get
from zo.optim import names as optimizer_names
from zo.optim.base import DTYPES, OptimConfig, ZOOptimizer
from zo.overrides import override_key
from zo.schedule import ScheduleConfig

SOURCES = ("hub", "smollm2_wheel", "minilm_wheel", "tiny", "quadratic")
TOKENIZERS = ("", "minilm", "smollm2")
TRAINABLE = ("all", "lora", "prefix")


class ConfigError(ValueError):
    """A config value is out of range; exit code 2."""


Checks = dict[str, tuple[bool, str]]


@dataclass
class TrainConfig:
    """train.*"""

    steps: int
    batch_size: int
    eval_every: int
    eval_samples: int
    dev_samples: int
    eval_batch_size: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    stall_steps: int
    diverge_factor: float
    diverge_eval: float
    shards: int

    def checks(self) -> Checks:
        return {
            "steps": (self.steps >= 0, "steps >= 0"),
            "batch_size": (self.batch_size >= 1, "batch_size >= 1"),
            "eval_every": (self.eval_every >= 0, "eval_every >= 0 (0 = only at start and end)"),
            "eval_samples": (self.eval_samples >= 1, "eval_samples >= 1"),
            "dev_samples": (self.dev_samples >= 0, "dev_samples >= 0 (0 = no dev evaluation)"),
            "eval_batch_size": (self.eval_batch_size >= 1, "eval_batch_size >= 1"),
            "seed": (self.seed >= 0, "seed >= 0"),
            "stall_steps": (self.stall_steps >= 0, "stall_steps >= 0 (0 = off)"),
            "shards": (self.shards >= 1, "shards >= 1"),
            "diverge_factor": (
                self.diverge_factor == 0 or self.diverge_factor > 1,
                "0 (off) or a factor > 1",
            ),
            "diverge_eval": (self.diverge_eval == 0 or self.diverge_eval > 1, "0 (off) or a factor > 1"),
        }


@dataclass
class TaskConfig:
    """task.*"""

    name: str
    sampling: Literal["auto", "kshot", "fixed", "full"]
    k: int
    num_train: int
    num_dev: int
    num_test: int
    test_cap: int
    data_seed: int
    max_length: int
    train_loss: Literal["auto", "classification", "lm"]
    encoding: str
    # task=custom only (conf/task/custom.yaml); the built-in tasks leave them unset
    files: dict | None = None
    columns: list | None = None
    label_field: str = "label"
    label_words: dict | None = None
    answer_field: str | None = None
    template: dict | None = None
    max_new_tokens: int = 50
    select_on: Literal["auto", "accuracy", "f1", "em", "eval_loss"] = "auto"

    def checks(self) -> Checks:
        from data import TASKS

        custom = self.files is not None  # the user's own files, under the name its YAML gives
        files, words, template = self.files or {}, self.label_words or {}, self.template or {}
        generate = custom and not words
        metrics = ("f1", "em", "eval_loss") if generate else ("accuracy", "eval_loss")
        return {
            "files": (
                not custom or (set(files) <= {"train", "test"} and bool(files.get("train"))),
                "{train: PATH (required), test: PATH or null}",
            ),
            "label_words": (
                not custom or all(isinstance(w, str) for w in words.values()),
                'a mapping from each label value to its word, e.g. {0: " terrible", 1: " great"} '
                "(null for generation)",
            ),
            "answer_field": (
                not (words and self.answer_field),
                "null with task.label_words (classification): a task classifies or generates",
            ),
            "template": (
                not custom
                or (
                    set(template) <= {"causal", "mlm", "chat"}
                    and template.get("chat", False) in (True, False)
                    and not (words and template.get("chat"))
                ),
                "{causal: PROMPT, mlm: PROMPT with {mask}, chat: true|false (generation only)}",
            ),
            "select_on": (
                self.select_on in (("auto", *metrics) if custom else ("auto",)),
                f"auto, {', '.join(metrics)} (a {'generation' if generate else 'classification'} task)"
                if custom
                else "auto (a key of task=custom only)",
            ),
            "max_new_tokens": (self.max_new_tokens >= 1, "max_new_tokens >= 1"),
            "name": (
                own_name(self.name) if custom else self.name in TASKS,
                "a name of your own (letters, digits, _ . -) that no built-in task has"
                if custom
                else "one of " + ", ".join(sorted(TASKS)),
            ),
            "k": (self.k >= 1, "k >= 1"),
            "num_train": (self.num_train >= 1, "num_train >= 1"),
            "num_dev": (self.num_dev >= 0, "num_dev >= 0"),
            "num_test": (self.num_test >= 1, "num_test >= 1"),
            "test_cap": (self.test_cap >= 1, "test_cap >= 1"),
            "data_seed": (0 <= self.data_seed < 2**32, "0 <= data_seed < 2^32"),
            "max_length": (self.max_length >= 1, "max_length >= 1 (tokens)"),
            "encoding": (self.encoding == "auto" or _is_codec(self.encoding), "auto or a Python codec name"),
        }


def own_name(name: str) -> bool:
    """A custom task's name: a file-name-safe word that is not a built-in task's (the report would
    merge the two); "custom" itself is task=custom's."""
    from data import TASKS

    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)) and (name == "custom" or name not in TASKS)


def _is_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


@dataclass
class DataConfig:
    """data.*"""

    root: str | None

    def checks(self) -> Checks:
        exists = self.root is None or Path(self.root).expanduser().is_dir()
        return {"root": (exists, "an existing folder, or null (then ../shared/datasets)")}


@dataclass
class LogConfig:
    """log.*"""

    wandb: Literal["online", "offline", "disabled"]
    project: str
    align_every: int

    def checks(self) -> Checks:
        return {
            "project": (bool(self.project), "a non-empty name"),
            "align_every": (self.align_every >= 0, ">= 0 (0 = off)"),
        }


@dataclass
class CkptConfig:
    """ckpt.*"""

    every: int
    mode: Literal["full", "log"]

    def checks(self) -> Checks:
        return {"every": (self.every >= 0, ">= 0 (0 = only when stopped)")}


@dataclass
class SaveConfig:
    """save.*"""

    model: bool

    def checks(self) -> Checks:
        return {}


class ModelKeys(ModelConfig):
    """model.*: `ModelConfig`'s fields and the values each may take."""

    def checks(self) -> Checks:
        return {
            "kind": (self.kind in KINDS, "one of " + ", ".join(KINDS)),
            "source": (self.source in SOURCES, "one of " + ", ".join(SOURCES)),
            "dtype": (self.dtype in DTYPES, "one of " + ", ".join(DTYPES)),
            "trainable": (
                self.trainable in TRAINABLE and (self.trainable != "prefix" or self.kind == "causal"),
                "all, lora or prefix (prefix: causal LMs only)",
            ),
            "lora": (
                set(self.lora) == {"r", "alpha", "target_modules"}
                and int(self.lora["r"]) >= 1
                and self.lora["alpha"] > 0
                and (self.lora["target_modules"] is None or isinstance(self.lora["target_modules"], list)),
                "{r: >= 1, alpha: > 0, target_modules: null or a list of module names}",
            ),
            "prefix": (
                set(self.prefix) == {"tokens"} and int(self.prefix["tokens"]) >= 1,
                "{tokens: >= 1}",
            ),
            "tokenizer": (
                self.tokenizer in TOKENIZERS[1:] if self.source == "tiny" else self.tokenizer in TOKENIZERS,
                "minilm or smollm2 (the offline tokenizers; required by source=tiny)",
            ),
            "device_map": (  # prefix: the virtual tokens' keys and values would have to follow each layer
                self.device_map is None or (self.kind != "quadratic" and self.trainable != "prefix"),
                "null with model=quadratic (one vector: use train.device) "
                "and with trainable=prefix (use lora or all)",
            ),
            "d": (self.d >= 1, "d >= 1"),
            "init_norm": (self.init_norm >= 0, "init_norm >= 0"),
        }


@dataclass
class TopConfig:
    """The keys at the top of conf/config.yaml; `overrides` is added by launch.py after validation."""

    resume: bool
    force: bool
    overrides: list = dataclasses.field(default_factory=list)

    def checks(self) -> Checks:
        return {}


SECTIONS: dict[str, type] = {
    "train": TrainConfig,
    "task": TaskConfig,
    "schedule": ScheduleConfig,
    "model": ModelKeys,
    "data": DataConfig,
    "log": LogConfig,
    "ckpt": CkptConfig,
    "save": SaveConfig,
}
# hydra: present when a test composes with return_hydra_config. tuned_lr: a grid's measured η for the
# run's model × task × optimizer (conf/tuned), which optimizer.lr reads unless the command line sets it.
IGNORED = {"hydra", "tuned_lr"}
# The top-level keys a run's settings live in. Anything else at the top is a lookup table, such as a
# sweep's lr_by_task: what the table picks is in the key that reads it (optimizer.lr), so a resume
# compares these keys and not the tables.
FLAGS = frozenset(f.name for f in dataclasses.fields(TopConfig))
SCHEMA_KEYS = frozenset({"optimizer", *SECTIONS, *FLAGS})


def validate(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """Every key's type, then its range, section by section; the first failure as one line.
    `overrides`: the command line's, which tell a typo'd top-level key from a sweep's lookup table."""
    optim_config(cfg)
    for name, schema in SECTIONS.items():
        section(schema, values(cfg, name), name)
    unknown = sorted(k for k in set(cfg) - SCHEMA_KEYS - IGNORED if not lookup_table(cfg, k, overrides))
    if unknown:
        keys = ", ".join(sorted(SCHEMA_KEYS))
        raise ConfigError(f"{unknown[0]} is not a key of the config; its keys: {keys}")
    section(TopConfig, values(OmegaConf.masked_copy(cfg, sorted(FLAGS & set(cfg)))), "")


def lookup_table(cfg: DictConfig, key: str, overrides: Sequence[str]) -> bool:
    """Whether an unknown top-level key is a lookup table rather than a typo. One that another value
    reads is. So is one a config file put there, unless its name is a near miss of a real key
    (`trian`): the command line may have overridden its reader (`train.steps=50` on a sweep whose
    steps come from its steps_by_optimizer) and the run must still go. One the command line added
    (`+stepz=5`) must be read."""
    if interpolated(cfg, key):
        return True
    added = {override_key(o).split(".")[0] for o in overrides if o.startswith("+")}
    return key not in added and not difflib.get_close_matches(key, SCHEMA_KEYS, n=1, cutoff=0.8)


def interpolated(cfg: DictConfig, key: str) -> bool:
    """Whether another value reads `key` through an interpolation (`${key.…}`, or a resolver's argument
    `${oc.select:key.…}`): a lookup table such as a sweep's `lr_by_optimizer` is allowed at the top;
    any other unknown key is a typo."""
    text = OmegaConf.to_yaml(cfg)  # unresolved
    return any(f"{start}{key}{end}" in text for start in ("${", ":") for end in ".}[")


def values(cfg: DictConfig, name: str | None = None) -> dict:
    """A section as plain values, interpolations resolved; a missing `???` is a ConfigError."""
    if name is not None and name not in cfg:
        raise ConfigError(f"{name}: the section is missing from the config (conf/config.yaml defines it)")
    node = cfg if name is None else cfg[name]
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        raise ConfigError(f"{err.full_key} is missing: set it, e.g. {err.full_key}=VALUE") from err
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or name
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from err


def section(schema: type, given: dict, prefix: str, what: str | None = None) -> typing.Any:
    """The schema's instance from `given`: unknown and missing keys, types, then `checks()`."""
    dotted = f"{prefix}." if prefix else ""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ConfigError(
            f"{dotted}{unknown[0]} is not a key of {what or prefix or 'the config'}; "
            f"its keys: {', '.join(sorted(fields))}"
        )
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in given:
            raise ConfigError(f"{dotted}{f.name} is missing: set it, e.g. {dotted}{f.name}=VALUE")
    obj = schema(**typed(schema, given, prefix))
    for key, (ok, allowed) in obj.checks().items():
        if not ok:
            raise ConfigError(f"{dotted}{key}={getattr(obj, key)} is invalid: allowed {allowed}")
    return obj


_SCALARS = {float: "a number", int: "an integer", bool: "true or false", str: "a string", dict: "a mapping",
            list: "a list"}  # fmt: skip


def _admits(want: object, value: object) -> tuple[bool, str]:
    """Whether `value` fits the annotation `want`, and the annotation in words."""
    origin = typing.get_origin(want)
    if origin is Literal:
        options = typing.get_args(want)
        return value in options, "one of " + ", ".join(map(str, options))
    if origin in (typing.Union, types.UnionType):
        arms = [_admits(a, value) for a in typing.get_args(want) if a is not type(None)]
        words = " or ".join(w for _, w in arms if w)
        return value is None or any(ok for ok, _ in arms), f"{words} or null"
    if want not in _SCALARS:
        return True, ""
    ok = isinstance(value, (int, float) if want is float else want)  # type: ignore[arg-type]
    return ok and (want is bool or not isinstance(value, bool)), _SCALARS[want]  # type: ignore[index]


def typed(cls: type, values: dict, prefix: str) -> dict:
    """Check each value against the dataclass field's annotation (a number where a number belongs),
    before any comparison could fail on it with a TypeError."""
    hints = typing.get_type_hints(cls)
    dotted = f"{prefix}." if prefix else ""
    for f in dataclasses.fields(cls):
        if f.name in values:
            ok, words = _admits(hints[f.name], values[f.name])
            if not ok:
                raise ConfigError(f"{dotted}{f.name}={values[f.name]} is invalid: allowed {words}")
    return values


def optim_config(cfg: DictConfig) -> OptimConfig:
    """The optimizer's own Config from `optimizer.*`: unknown names, unknown keys and wrong types
    are ConfigErrors (exit 2)."""
    given = values(cfg, "optimizer")
    name = given.get("name")
    if name not in optimizer_names():
        raise ConfigError(f"optimizer.name={name} is invalid: allowed one of " + ", ".join(optimizer_names()))
    cls = get(name)
    try:
        o = section(cls.Config, given, "optimizer", what=f"optimizer {name}")
    except ZOError as err:  # a Config that refuses a combination in __post_init__
        raise ConfigError(str(err)) from err
    if o.queries > 1 and not cls.supports_queries:
        raise ConfigError(f"optimizer.queries={o.queries} is invalid: {name} takes one probe pair a step (1)")
    if o.batched_probes and not issubclass(cls, ZOOptimizer):
        raise ConfigError(f"optimizer.batched_probes=true is invalid: {name} takes gradients, not probes")
    return o


def model_config(cfg: DictConfig) -> ModelConfig:
    return ModelConfig(**values(cfg, "model"))


def schedule_config(cfg: DictConfig) -> ScheduleConfig:
    return ScheduleConfig(**values(cfg, "schedule"))
