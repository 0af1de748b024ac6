"""How each paper's suite draws its train/dev/test examples.

- kshot (LM-BFF, the RoBERTa suite): one seeded permutation of the original
  train set; walking it, the first k examples of each class go to train and
  the next k to dev (the procedure of LM-BFF's generate_k_shot_data.py). Test
  is the original labelled evaluation set, capped at test_cap.
- fixed (MeZO, the OPT suite): one seeded permutation of train gives num_train
  then num_dev examples; num_test are drawn from the evaluation set.
- full: all of train, no dev, the evaluation set capped at test_cap.

Every draw uses numpy's legacy RandomState(data_seed), as both papers do, so a
seed names one sample for good. The test set always comes back in seeded
order, because the runner evaluates on its first `train.eval_samples` rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from data.base import DataError, Example, Task

SAMPLINGS = ("kshot", "fixed", "full")
ALL = "all"  # the one "class" of tasks without classes (generation, per-example candidates)


def permuted(examples: list[Example], seed: int) -> list[Example]:
    return [examples[i] for i in np.random.RandomState(seed).permutation(len(examples))]


def class_name(task: Task, label: int | None) -> str:
    """The label word without its space (readable in summary.json); ALL for tasks without classes."""
    if task.task_type != "classify" or label is None:
        return ALL
    return task.label_words[label].strip() or str(label)


def class_counts(task: Task, examples: list[Example]) -> dict[str, int]:
    """Examples per class, every class listed (zeros included) in label order."""
    counts = Counter(class_name(task, ex.label) for ex in examples)
    names = [class_name(task, i) for i in range(task.num_labels)] if task.task_type == "classify" else [ALL]
    return {name: counts[name] for name in names}


def kshot(task: Task, pool: list[Example], k: int, seed: int) -> tuple[list[Example], list[Example]]:
    """k per class for train, the next k per class for dev; a class with fewer gives what it has."""
    train: list[Example] = []
    dev: list[Example] = []
    seen: Counter = Counter()
    for ex in permuted(pool, seed):
        name = class_name(task, ex.label)
        seen[name] += 1
        if seen[name] <= k:
            train.append(ex)
        elif seen[name] <= 2 * k:
            dev.append(ex)
    return train, dev


@dataclass(frozen=True)
class Request:
    """What one run asks of a task's data (the `task.*` keys of the config); checked on creation,
    so a bad request fails before any slow read. Sizes a mode does not use stay 0."""

    sampling: str
    data_seed: int
    k: int = 0  # kshot: examples per class for train, and again for dev
    num_train: int = 0  # fixed
    num_dev: int = 0  # fixed
    num_test: int = 0  # fixed
    test_cap: int = 0  # kshot and full: at most this many test examples

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise DataError(f"task.sampling={self.sampling} is invalid: allowed {', '.join(SAMPLINGS)}")
        if min(self.k, self.num_train, self.num_dev, self.num_test, self.test_cap) < 0:
            raise DataError("task.k, num_train, num_dev, num_test and test_cap must all be >= 0")


def draw(
    task: Task, train_pool: list[Example], test_pool: list[Example], req: Request
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, dev, test) as the sampling mode prescribes; train and dev never share an example."""
    sampling, seed = req.sampling, req.data_seed
    if sampling == "kshot":
        train, dev = kshot(task, train_pool, req.k, seed)
    elif sampling == "fixed":
        order = permuted(train_pool, seed)
        train, dev = order[: req.num_train], order[req.num_train : req.num_train + req.num_dev]
    else:
        train, dev = list(train_pool), []
    test = permuted(test_pool, seed)[: req.num_test if sampling == "fixed" else req.test_cap]
    return train, dev, test
