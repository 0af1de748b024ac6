"""Task registry: a task is available once its class is decorated with `@register`."""

from __future__ import annotations

from data.base import DataError, Task

TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    if cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} registered twice")
    TASKS[cls.name] = cls
    return cls


OWN_FILES = "custom"  # the task of a user's own files: whatever its name, its keys hold `files`


def build_task(name: str, options: dict | None = None) -> Task:
    """Task `name`; `options` are its `task.*` keys (read by the tasks that are defined by them). A
    task with `files` is the user's own (task=custom), which takes the name its YAML gives it."""
    if (options or {}).get("files") is not None:
        name = OWN_FILES
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name].build(options or {})
