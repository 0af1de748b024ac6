"""The contract between tasks (this package) and the runner (`zo/`).

A task turns raw dataset rows into `Example`s and knows how to phrase them as
prompts for each model kind. The runner never looks at raw rows, and tasks
never touch tokenizers: that split keeps one template class per task small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

MASK = "{mask}"
"""Placeholder in masked-LM prompts; the runner swaps in the tokenizer's mask token."""


class DataError(RuntimeError):
    """A dataset could not be found or read; the message says what was tried and how to fix it."""


@dataclass
class Example:
    """One normalised example.

    `label` indexes the task's label words (classification) or `candidates`
    (per-example multiple choice, e.g. ReCoRD entities). Generation tasks set
    `answers` (all gold strings) and leave `label` as None; their `meta` may say what a causal LM
    trains on (`target`: the continuation as written, default " " + answers[0]), that the prompt is
    a conversation for the chat template (`messages`), and where the row is (`line`).
    """

    fields: dict[str, str]
    label: int | None = None
    candidates: list[str] | None = None
    answers: list[str] | None = None
    meta: dict = field(default_factory=dict)


class Task:
    """Base class: one subclass per task, registered by `name`.

    Class attributes say where the data lives and how it is scored; methods
    phrase an example for a model kind. `label_words` is the verbalizer used
    for masked-LM prompts (each with its leading space, as LM-BFF writes them);
    `causal_candidates` defaults to the same words.
    """

    name: ClassVar[str]
    task_type: ClassVar[str] = "classify"  # "classify" | "multiple_choice" | "generate" | "synthetic"
    label_words: ClassVar[list[str]] = []
    hub_id: ClassVar[str | None] = None  # datasets.load_dataset path
    hub_config: ClassVar[str | None] = None
    splits: ClassVar[dict[str, list[str]]] = {}  # split -> candidate relative paths under data.root
    test_split: ClassVar[str] = "test"  # which of our splits holds the labelled evaluation set
    # generation: tokens decoded per answer; prompts are conversations (Example.meta["messages"]) that
    # the tokenizer's chat template renders
    max_new_tokens: ClassVar[int] = 50
    chat: ClassVar[bool] = False
    select_on: ClassVar[str] = "auto"  # the metric that picks the best step on dev (auto: the objective's)

    @classmethod
    def build(cls, options: dict) -> Task:
        """The task, given its `task.*` keys: a built-in task needs none of them (`task=custom` does)."""
        return cls()

    def load_split(self, split: str, root: Path | None) -> list[Example]:
        raise NotImplementedError

    def mlm_prompt(self, ex: Example) -> str:
        """Prompt containing exactly one MASK, whose filling is one of `label_words`."""
        raise NotImplementedError

    def causal_prompt(self, ex: Example) -> str:
        """Context that a causal LM continues with one of `causal_candidates(ex)` (or the answer)."""
        raise NotImplementedError

    def causal_candidates(self, ex: Example) -> list[str]:
        return ex.candidates if ex.candidates is not None else list(self.label_words)

    def text(self, ex: Example) -> str | tuple[str, str]:
        """Raw input for a classification-head model (single text or a pair)."""
        values = list(ex.fields.values())
        return values[0] if len(values) == 1 else (values[0], values[1])

    @property
    def num_labels(self) -> int:
        return len(self.label_words)
