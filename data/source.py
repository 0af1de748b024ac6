"""Where a task's rows come from: a local file under data.root, else the Hugging Face hub.

Local files win so that offline machines and CI never touch the network. The
hub path is real but guarded: it is skipped when HF_DATASETS_OFFLINE or
HF_HUB_OFFLINE is 1 or when the hub host does not answer within a few
seconds, because `datasets` itself retries for ~25 s before failing. Whatever
fails, the user sees one line naming every place tried and how to fix it,
never a `datasets` traceback.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from data.base import DataError, Example, Task

DEFAULT_SEED = 42
"""Seed used to fill `{seed}` in local path candidates when the caller gives none (LM-BFF's usual seed)."""

FIX = (
    "set data.root=/path/to/datasets (or env ZO_DATA_ROOT) to a folder holding one of those files, "
    "or make the hub reachable"
)


@dataclass
class Fetched:
    examples: list[Example]
    source: str  # "local:<path>" or "hub:<id>[/<config>]:<split>"


class DataTask(Task):
    """A task whose splits are files (one reader per layout) with a hub fallback.

    Subclasses set `splits` (candidate paths per split, first existing wins;
    `{seed}` is replaced by the data seed), `read` for the local layouts and
    `from_hub` for hub rows (returning None drops a row, e.g. unlabelled ones).
    """

    hub_splits: ClassVar[dict[str, str]] = {"train": "train", "test": "validation"}
    causal_words: ClassVar[list[str] | None] = None  # MeZO's candidates, where they differ from label_words

    def read(self, path: Path) -> list[Example]:
        raise NotImplementedError

    def from_hub(self, row: dict) -> Example | None:
        raise NotImplementedError

    def fetch(self, split: str, root: Path | None, seed: int = DEFAULT_SEED) -> Fetched:
        """The split's examples and where they came from."""
        return fetch_split(self, split, root, seed)

    def load_split(self, split: str, root: Path | None, seed: int = DEFAULT_SEED) -> list[Example]:
        return self.fetch(split, root, seed).examples

    def mlm_prompt(self, ex: Example) -> str:
        raise DataError(
            f"task {self.name} has no masked-LM prompt (its paper setting uses causal LMs); "
            "use a causal model (model.kind=causal)"
        )

    def causal_candidates(self, ex: Example) -> list[str]:
        if ex.candidates is not None:
            return ex.candidates
        return list(self.causal_words or self.label_words)


def local_candidates(task: Task, split: str, root: Path | None, seed: int) -> list[Path]:
    if root is None:
        return []
    return [root / rel.format(seed=seed) for rel in task.splits.get(split, [])]


def fetch_split(task: DataTask, split: str, root: Path | None, seed: int) -> Fetched:
    """Rows of one split from the first local candidate that exists, else from the hub."""
    tried = local_candidates(task, split, root, seed)
    for path in tried:
        if path.is_file():
            try:
                return Fetched(task.read(path), f"local:{path}")
            except (KeyError, IndexError, ValueError, TypeError) as err:
                raise DataError(
                    f"{path} is not in the layout task {task.name} expects ({type(err).__name__}: {err})"
                ) from err
    hub_split = task.hub_splits.get(split)
    why = hub_skip_reason(task.hub_id, hub_split)
    if why is None:
        try:
            return Fetched(_hub_rows(task, hub_split), f"hub:{hub_name(task)}:{hub_split}")
        except Exception as err:  # `datasets` raises many types; the user needs one line
            why = f"failed ({type(err).__name__}: {first_line(err)})"
    local = ", ".join(str(p) for p in tried) if tried else "none (data.root is not set)"
    raise DataError(
        f"task {task.name}: no {split} data. Local paths tried: {local}. "
        f"Hub {hub_name(task) or '(none)'}: {why}. Fix: {FIX}"
    )


def first_line(err: Exception, limit: int = 160) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else ""


def hub_name(task: Task) -> str:
    if task.hub_id is None:
        return ""
    return task.hub_id + (f"/{task.hub_config}" if task.hub_config else "")


def hub_skip_reason(hub_id: str | None, hub_split: str | None) -> str | None:
    """Why the hub is not worth trying (None = try it)."""
    if hub_id is None or hub_split is None:
        return "this task has no hub copy of that split"
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"skipped because {var}=1"
    if not _hub_reachable():
        return "skipped because the hub host is unreachable"
    return None


@functools.cache
def _hub_reachable(timeout: float = 3.0) -> bool:
    """A 3 s TCP probe of the hub endpoint; behind a proxy, trust the proxy and let `datasets` try."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_rows(task: DataTask, hub_split: str) -> list[Example]:
    import datasets  # imported here: it is slow to import and only this path needs it

    rows = datasets.load_dataset(task.hub_id, task.hub_config, split=hub_split)
    return [ex for row in rows if (ex := task.from_hub(row)) is not None]
