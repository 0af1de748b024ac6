"""k-shot / fixed / full sampling: exact sizes, seed stability, disjointness, and the info record."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from data import DataError, Example, build_task, load_task_data
from data.sampling import Request, draw


def pool(per_class: dict[int, int], tag: str = "t") -> list[Example]:
    """Distinct examples: `per_class[label]` of each label."""
    return [Example({"sentence": f"{tag}{y}-{i}"}, y) for y, n in per_class.items() for i in range(n)]


SST2 = build_task("sst2")
SIZES = {"k": 16, "num_train": 40, "num_dev": 10, "num_test": 25, "test_cap": 30}


def ids(examples: list[Example]) -> list[str]:
    return [e.fields["sentence"] for e in examples]


def test_kshot_takes_exactly_k_per_class_for_train_and_dev_disjoint() -> None:
    train, dev, test = draw(
        SST2,
        pool({0: 100, 1: 60}),
        pool({0: 50, 1: 50}, "x"),
        Request(sampling="kshot", data_seed=13, **SIZES),
    )
    assert Counter(e.label for e in train) == {0: 16, 1: 16}
    assert Counter(e.label for e in dev) == {0: 16, 1: 16}
    assert not set(ids(train)) & set(ids(dev))
    assert len(test) == 30 and len(set(ids(test))) == 30  # capped, no repeats


def test_kshot_is_seed_stable_and_seeds_differ() -> None:
    data = pool({0: 100, 1: 100})
    runs = {s: draw(SST2, data, data, Request(sampling="kshot", data_seed=s, **SIZES)) for s in (13, 13, 21)}
    again = draw(SST2, data, data, Request(sampling="kshot", data_seed=13, **SIZES))
    assert [ids(split) for split in runs[13]] == [ids(split) for split in again]
    assert set(ids(runs[13][0])) != set(ids(runs[21][0]))
    assert ids(runs[13][2]) != ids(runs[21][2])  # the capped test sample moves with the seed too


def test_kshot_class_with_fewer_than_k_gives_all_it_has() -> None:
    train, dev, _ = draw(SST2, pool({0: 100, 1: 20}), [], Request(sampling="kshot", data_seed=0, **SIZES))
    assert Counter(e.label for e in train) == {0: 16, 1: 16}
    assert Counter(e.label for e in dev) == {0: 16, 1: 4}
    train, dev, _ = draw(SST2, pool({0: 100, 1: 10}), [], Request(sampling="kshot", data_seed=0, **SIZES))
    assert Counter(e.label for e in train) == {0: 16, 1: 10} and Counter(e.label for e in dev) == {0: 16}


def test_fixed_sizes_and_disjointness() -> None:
    data = pool({0: 70, 1: 30})
    train, dev, test = draw(SST2, data, pool({0: 40}, "x"), Request(sampling="fixed", data_seed=42, **SIZES))
    assert (len(train), len(dev), len(test)) == (40, 10, 25)
    assert not set(ids(train)) & set(ids(dev))
    same = draw(SST2, data, pool({0: 40}, "x"), Request(sampling="fixed", data_seed=42, **SIZES))
    assert [ids(s) for s in (train, dev, test)] == [ids(s) for s in same]
    other = draw(SST2, data, pool({0: 40}, "x"), Request(sampling="fixed", data_seed=43, **SIZES))
    assert ids(other[0]) != ids(train)


def test_fixed_with_too_few_rows_takes_all() -> None:
    train, dev, test = draw(
        SST2, pool({0: 45}), pool({1: 7}), Request(sampling="fixed", data_seed=1, **SIZES)
    )
    assert (len(train), len(dev), len(test)) == (40, 5, 7)


def test_full_keeps_train_and_caps_test() -> None:
    train, dev, test = draw(
        SST2, pool({0: 50}), pool({1: 100}), Request(sampling="full", data_seed=1, **SIZES)
    )
    assert (len(train), len(dev), len(test)) == (50, 0, 30)


def test_test_set_is_shuffled_even_when_not_capped() -> None:
    """The runner evaluates on the first rows of test; a file-ordered test set would bias that prefix."""
    _, _, test = draw(SST2, [], pool({0: 10, 1: 10}), Request(sampling="full", data_seed=5, **SIZES))
    assert sorted(ids(test)) == sorted(ids(pool({0: 10, 1: 10}))) and ids(test) != ids(pool({0: 10, 1: 10}))


def test_generation_tasks_sample_k_in_total() -> None:
    squad = build_task("squad")
    qa = [Example({"question": f"q{i}"}, answers=["a"]) for i in range(50)]
    train, dev, _ = draw(squad, qa, [], Request(sampling="kshot", data_seed=0, **SIZES))
    assert (len(train), len(dev)) == (16, 16)


def test_bad_sampling_mode_is_a_data_error() -> None:
    with pytest.raises(DataError, match="task.sampling=auto is invalid: allowed kshot, fixed, full"):
        draw(SST2, [], [], Request(sampling="auto", data_seed=0, **SIZES))


def write_sst2(root: Path, n_train: int = 40, n_test: int = 12) -> None:
    (root / "SST-2").mkdir(parents=True)
    rows = "".join(f"sentence {i} \t{i % 2}\n" for i in range(n_train))
    (root / "SST-2/train.tsv").write_text("sentence\tlabel\n" + rows)
    (root / "SST-2/dev.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"dev {i} \t{i % 2}\n" for i in range(n_test))
    )


def test_info_records_sources_sizes_classes_and_shortfalls(tmp_path: Path) -> None:
    write_sst2(tmp_path)
    data = load_task_data(SST2, tmp_path, Request(sampling="kshot", k=15, test_cap=10, data_seed=21))
    assert data.info == {
        "task": "sst2",
        "sampling": "kshot",
        "data_seed": 21,
        "source": {
            "train": f"local:{tmp_path / 'SST-2/train.tsv'}",
            "test": f"local:{tmp_path / 'SST-2/dev.tsv'}",
        },
        "available": {"train": 40, "test": 12},
        "asked": {"k": 15},
        "test_cap": 10,
        "obtained": {"train": 30, "dev": 10, "test": 10},
        "per_class": {"train": {"terrible": 15, "great": 15}, "dev": {"terrible": 5, "great": 5}},
        "short": ["dev class terrible: 5 of k=15", "dev class great: 5 of k=15"],
    }
    assert json.loads(json.dumps(data.info)) == data.info
    fixed = load_task_data(
        SST2,
        tmp_path,
        Request(sampling="fixed", num_train=30, num_dev=20, num_test=5, test_cap=1000, data_seed=21),
    )
    assert fixed.info["asked"] == {"num_train": 30, "num_dev": 20, "num_test": 5}
    assert fixed.info["obtained"] == {"train": 30, "dev": 10, "test": 5}
    assert fixed.info["short"] == ["dev: 10 of 20"] and fixed.info["test_cap"] is None


def test_quadratic_loads_no_data() -> None:
    data = load_task_data(build_task("quadratic"), None, Request(sampling="full", data_seed=0))
    assert (data.train, data.dev, data.test) == ([], [], [])
    assert data.info == {"task": "quadratic", "sampling": "none", "data_seed": 0}
