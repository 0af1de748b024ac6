"""`task=custom`: a classification or generation task from the user's own file, by config alone.

Everything a built-in task class says in Python, conf/task/custom.yaml says in keys: the files
(`files.train`, optional `files.test`), the column names of a headerless file (`columns`) and the
prompts (`template.causal`, `template.mlm` with `{column}` placeholders and `{mask}` for the masked
slot). Then either
- classification: the label column (`label_field`) and the verbalizer (`label_words`: each label
  value *as written in the file* to the word scored for it, in the order that fixes the class
  indices); or
- generation: the answer column (`answer_field`), or a .jsonl/.json file in one of TRL's formats
  (data/conversations.py), which needs neither key. `template.chat=true` hands the causal prompt
  to the tokenizer's chat template as one user message. A row with an empty answer is dropped,
  with a count on stderr.

File formats: data/rows.py. Field values are stripped of surrounding whitespace. A file that
cannot be used stops the run before any model loads with one DataError line naming the file, the
line and the fix.

Without `files.test`, the test examples come from the train file: one seeded permutation of it
(numpy RandomState(data_seed), like every draw) holds out its first num_test rows (test_cap with
kshot or full sampling), at most half the file, and train and dev are drawn from the rest.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

from data import conversations
from data.base import MASK, DataError, Example
from data.registry import register
from data.rows import Row, read_rows
from data.sampling import permuted
from data.source import DataTask, Fetched


def placeholders(template: str) -> list[str]:
    """The `{name}` fields of a template, in order, without {mask}."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return [n for n in dict.fromkeys(names) if n != "mask"]


def label_value(key: object) -> str:
    """A label_words key as the file writes it: Hydra's command line reads `{0: ..., -1: ...}` keys
    as numbers and `true` as a boolean."""
    return str(key).lower() if isinstance(key, bool) else str(key)


@register
class CustomTask(DataTask):
    """A user's file described by `task.*` keys (see the module docstring and conf/task/custom.yaml)."""

    name = "custom"

    def __init__(self, options: dict | None = None) -> None:
        o = options or {}
        files = o.get("files") or {}
        if not files.get("train"):
            raise DataError("task=custom needs task.files.train=PATH (a .csv, .tsv, .jsonl or .json file)")
        words, self.answer_field = o.get("label_words") or {}, o.get("answer_field")
        if not isinstance(words, dict) or not all(isinstance(w, str) for w in words.values()):
            raise DataError('task.label_words: one word per label value, e.g. {0: " bad", 1: " good"}')
        if words and self.answer_field:
            raise DataError("task=custom: set task.label_words (classification) or task.answer_field "
                            "(generation), not both")  # fmt: skip
        self.name = o.get("name") or "custom"  # its YAML's (file) name: run folders, summary.json, zo.report
        self.task_type = "classify" if words else "generate"
        self.files = {split: files.get(split) for split in ("train", "test")}
        self.columns = o.get("columns")
        self.label_field = o.get("label_field") or "label"
        self.values = [label_value(v) for v in words]  # label value as written -> class index (its position)
        self.label_words = [str(w) for w in words.values()]
        template = o.get("template") or {}
        self.templates = {kind: template.get(kind) for kind in ("causal", "mlm")}
        self.chat = bool(template.get("chat"))  # prompts go through the tokenizer's chat template
        used = self.templates.values() if words else [self.templates["causal"]]
        self.fields = list(dict.fromkeys(f for t in used if t for f in placeholders(t)))
        self.max_new_tokens = int(o.get("max_new_tokens", 50))
        self.select_on = o.get("select_on", "auto")
        fixed = o.get("sampling", "auto") in ("auto", "fixed")
        held = o.get("num_test", 1000) if fixed else o.get("test_cap", 1000)
        self.hold_out = int(held)  # test rows taken from the train file when there is no files.test
        self._read: dict[Path, list[Example]] = {}  # each file read (and warned about) once

    @classmethod
    def build(cls, options: dict) -> CustomTask:
        return cls(options)

    # ---- data -------------------------------------------------------------------------------------
    def fetch(self, split: str, root: Path | None, seed: int) -> Fetched:
        if split == "test" and self.files["test"]:
            path = self._path(self.files["test"], root)
            return Fetched(self.read(path), f"local:{path}")
        path = self._path(self.files["train"], root)
        examples = self.read(path)
        if self.files["test"]:
            return Fetched(examples, f"local:{path}")
        shuffled = permuted(examples, seed)
        held = min(self.hold_out, len(examples) // 2)
        part = shuffled[:held] if split == "test" else shuffled[held:]
        return Fetched(part, f"local:{path} ({'held-out' if split == 'test' else 'rest'}: {len(part)} rows)")

    def _path(self, given: str, root: Path | None) -> Path:
        path = Path(given).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.is_file():
            raise DataError(
                f"task.files: {path} is not a file: give an absolute path, or one under data.root ({root})"
            )
        return path

    def read(self, path: Path) -> list[Example]:
        if path not in self._read:
            rows = read_rows(path, self.columns)
            named = self.label_words or self.answer_field  # a column says what to learn; else TRL's keys
            kind = None if named else conversations.trl_format(rows[0].record)
            self._read[path] = self._trl(path, rows, kind) if kind else self._columns(path, rows)
        return self._read[path]

    def _columns(self, path: Path, rows: list[Row]) -> list[Example]:
        if self.task_type == "generate" and not self.answer_field:
            raise DataError(
                f"{path}: task=custom needs task.label_words (classification) or task.answer_field "
                "(generation); only a .jsonl/.json file in TRL's format (prompt/completion or messages "
                "keys) needs neither"
            )
        names = set(rows[0].values) if rows else set()
        target = self.label_field if self.task_type == "classify" else self.answer_field
        for key in (target, *self.fields):
            if key not in names:
                fix = "the template's {" + key + "}"
                if key == target:
                    fix = "task.label_field" if self.task_type == "classify" else "task.answer_field"
                raise DataError(
                    f"{path}: no column '{key}' (its columns: {', '.join(sorted(names))}); fix {fix}"
                    + (", or name the columns with task.columns" if self.columns is None else "")
                )
        if self.task_type == "generate":
            return self._kept(path, [self._answered(row) for row in rows], rows)
        out = []
        for row in rows:
            value = row.values[self.label_field].strip()
            if value not in self.values:
                raise DataError(
                    f"{path} line {row.line}: label '{value}' is not a key of task.label_words "
                    f"({', '.join(self.values)}); add it there, or fix the row"
                )
            fields = {f: row.values[f].strip() for f in self.fields}
            out.append(Example(fields, self.values.index(value)))
        return out

    def _answered(self, row: Row) -> Example | None:
        answer = row.values[self.answer_field].strip()
        fields = {f: row.values[f].strip() for f in self.fields}
        return Example(fields, answers=[answer], meta={"line": row.line}) if answer else None

    def _trl(self, path: Path, rows: list[Row], kind: str) -> list[Example]:
        return self._kept(path, [conversations.example(path, row, kind) for row in rows], rows)

    def _kept(self, path: Path, examples: list[Example | None], rows: list[Row]) -> list[Example]:
        """The answered examples, each wrapped as a chat where template.chat asks; the count of those
        dropped for an empty answer on stderr."""
        empty = [row.line for row, ex in zip(rows, examples, strict=True) if ex is None]
        if len(empty) == len(rows):
            raise DataError(f"{path}: every row's answer is empty; fill in the answers")
        if empty:
            lines = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
            print(f"warning: {path}: {len(empty)} of {len(rows)} rows have an empty answer and are dropped "
                  f"(lines {lines})", file=sys.stderr)  # fmt: skip
        kept = [ex for ex in examples if ex is not None]
        for ex in kept:
            if self.chat and "messages" not in ex.meta:
                ex.meta["messages"] = [{"role": "user", "content": self.causal_prompt(ex)}]
        self.chat = self.chat or any("messages" in ex.meta for ex in kept)  # a conversations file
        return kept

    # ---- prompts ----------------------------------------------------------------------------------
    def _prompt(self, kind: str, ex: Example) -> str:
        if "prompt" in ex.meta:  # TRL's prompt–completion: the prompt as written
            return ex.meta["prompt"]
        template = self.templates[kind]
        if not template:
            model = {"mlm": "masked-LM", "causal": "causal"}[kind]
            raise DataError(f"task=custom has no {model} prompt: set task.template.{kind}")
        return template.format(**ex.fields, mask=MASK)

    def mlm_prompt(self, ex: Example) -> str:
        return self._prompt("mlm", ex)

    def causal_prompt(self, ex: Example) -> str:
        return self._prompt("causal", ex)
