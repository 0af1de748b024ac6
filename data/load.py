"""`load_task_data`: read a task's train and evaluation splits, sample them, say what happened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.base import Example, Task
from data.sampling import Request, class_counts, draw
from data.source import DataTask, Fetched


@dataclass
class TaskData:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    info: dict  # JSON-serialisable record of what was read and drawn; the runner puts it in summary.json


def load_task_data(task: Task, root: Path | None, req: Request) -> TaskData:
    """Sample train/dev/test for one run; requests the data cannot fill are listed in info["short"]."""
    info: dict = {"task": task.name, "sampling": req.sampling, "data_seed": req.data_seed}
    if task.task_type == "synthetic":
        return TaskData([], [], [], {**info, "sampling": "none"})
    pools = {split: _fetch(task, split, root, req.data_seed) for split in ("train", task.test_split)}
    train_pool, test_pool = pools["train"].examples, pools[task.test_split].examples
    train, dev, test = draw(task, train_pool, test_pool, req)
    sampling = req.sampling
    asked = {
        "kshot": {"k": req.k},
        "fixed": {"num_train": req.num_train, "num_dev": req.num_dev, "num_test": req.num_test},
        "full": {},
    }[sampling]
    per_class = {"train": class_counts(task, train), "dev": class_counts(task, dev)}
    info |= {
        "source": {"train": pools["train"].source, "test": pools[task.test_split].source},
        "available": {"train": len(train_pool), "test": len(test_pool)},
        "asked": asked,
        "test_cap": req.test_cap if sampling != "fixed" else None,
        "obtained": {"train": len(train), "dev": len(dev), "test": len(test)},
        "per_class": per_class,
        "short": _shortfalls(sampling, asked, per_class, {"train": train, "dev": dev, "test": test}),
    }
    return TaskData(train, dev, test, info)


def _fetch(task: Task, split: str, root: Path | None, seed: int) -> Fetched:
    if isinstance(task, DataTask):
        return task.fetch(split, root, seed)
    return Fetched(task.load_split(split, root), f"{type(task).__name__}.load_split")


def _shortfalls(sampling: str, asked: dict, per_class: dict, splits: dict) -> list[str]:
    """One line per request that the data could not fill (e.g. 'train class Expression: 86 of k=512')."""
    if sampling == "kshot":
        return [
            f"{split} class {name}: {n} of k={asked['k']}"
            for split, counts in per_class.items()
            for name, n in counts.items()
            if n < asked["k"]
        ]
    if sampling == "fixed":
        wanted = {"train": asked["num_train"], "dev": asked["num_dev"], "test": asked["num_test"]}
        return [f"{s}: {len(splits[s])} of {n}" for s, n in wanted.items() if len(splits[s]) < n]
    return []
