"""conf/task/*.yaml: one file per registered task, each composing over _base with the documented keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import TASKS
from tests.conftest import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
KEYS = {
    "name",
    "sampling",
    "k",
    "num_train",
    "num_dev",
    "num_test",
    "test_cap",
    "data_seed",
    "max_length",
    "train_loss",
    "encoding",
}


def task_config(name: str):
    return compose([f"task={name}"]).task


def test_one_file_per_registered_task() -> None:
    files = {p.stem for p in (CONF / "task").glob("*.yaml") if not p.stem.startswith("_")}
    assert files == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_file_composes_with_base_defaults(name: str) -> None:
    cfg = task_config(name)
    own = {"files", "columns", "label_field", "label_words", "answer_field", "template", "max_new_tokens",
           "select_on"} if name == "custom" else set()  # fmt: skip
    assert cfg.name == name and set(cfg) == KEYS | own  # task=custom: the keys that describe its file
    assert cfg.sampling in ("auto", "kshot", "fixed", "full")


def test_documented_overrides() -> None:
    sst2, bbc, quad = task_config("sst2"), task_config("bbcnews"), task_config("quadratic")
    assert (sst2.sampling, sst2.k, sst2.num_train, sst2.num_dev, sst2.num_test) == (
        "auto",
        512,
        1000,
        500,
        1000,
    )
    assert (sst2.test_cap, sst2.data_seed, sst2.max_length) == (1000, 42, 256)
    assert (bbc.sampling, bbc.num_train, bbc.num_dev, bbc.num_test, bbc.max_length) == (
        "fixed",
        1000,
        100,
        445,
        96,
    )
    assert quad.sampling == "full"
