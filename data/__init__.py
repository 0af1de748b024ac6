"""Tasks and their data for zo-runner.

`build_task(name)` gives a task (prompts, label words, where its files live);
`load_task_data(task, root, Request(...))` reads and samples its splits. A new task is
one small class registered with `@register` in a `tasks_*` module, or, for a user's own
labelled file, a config (`task=custom`, data/tasks_custom.py).
"""

from __future__ import annotations

from data import (  # noqa: F401 (register)
    tasks_custom,
    tasks_nli,
    tasks_offline,
    tasks_qa,
    tasks_sentence,
    tasks_superglue,
)
from data.base import MASK, DataError, Example, Task
from data.load import TaskData, load_task_data
from data.registry import TASKS, build_task
from data.sampling import Request

__all__ = [
    "MASK",
    "TASKS",
    "DataError",
    "Example",
    "Request",
    "Task",
    "TaskData",
    "build_task",
    "load_task_data",
]
