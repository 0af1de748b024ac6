"""`task=custom`: a classification task from the user's own labelled file, by config alone.

Everything a built-in task class says in Python, conf/task/custom.yaml says in keys: the files
(`files.train`, optional `files.test`), the column names of a headerless file (`columns`), the
label column (`label_field`), the verbalizer (`label_words`: each label value *as written in the
file* to the word scored for it, in the order that fixes the class indices) and the prompts
(`template.causal`, `template.mlm` with `{column}` placeholders and `{mask}` for the masked slot).

Formats by extension: `.csv` (real CSV: quoted fields may hold commas and newlines), `.tsv` (split
on tabs only, never quote-parsed, as GLUE's files need: their quotes are unbalanced), `.jsonl`
(one object per line), `.json` (a list of objects). A UTF-8 BOM and blank lines are skipped; field
values are stripped of surrounding whitespace. A file that cannot be used stops the run before any
model loads with one DataError line naming the file, the line and the fix.

Without `files.test`, the test examples come from the train file: one seeded permutation of it
(numpy RandomState(data_seed), like every draw) holds out its first num_test rows (test_cap with
kshot or full sampling), at most half the file, and train and dev are drawn from the rest.
"""

from __future__ import annotations

import csv
import io
import json
import string
from dataclasses import dataclass
from pathlib import Path

from data.base import MASK, DataError, Example
from data.readers import read_text
from data.registry import register
from data.sampling import permuted
from data.source import DataTask, Fetched

FORMATS = (".csv", ".tsv", ".jsonl", ".json")


def placeholders(template: str) -> list[str]:
    """The `{name}` fields of a template, in order, without {mask}."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    return [n for n in dict.fromkeys(names) if n != "mask"]


@dataclass
class Row:
    values: dict[str, str]
    line: int  # where the record starts in its file (1-based), for error messages


def read_rows(path: Path, columns: list[str] | None) -> list[Row]:
    """The records of a csv/tsv/jsonl/json file as column -> text, each with its starting line."""
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: unknown format '{path.suffix}'; use one of {', '.join(FORMATS)}")
    text = read_text(path).removeprefix("\ufeff")
    if path.suffix in (".jsonl", ".json"):
        return _json_rows(path, text)
    if path.suffix == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        records, start = [], 1
        for fields in reader:
            records.append((fields, start))
            start = reader.line_num + 1
    else:  # tsv: tabs only (see the module docstring)
        records = [(line.rstrip("\r").split("\t"), i) for i, line in enumerate(text.split("\n"), 1)]
    records = [(f, n) for f, n in records if any(v.strip() for v in f)]  # stray blank lines
    if not records:
        raise DataError(f"{path}: the file holds no rows")
    if columns is None:
        (header, _), records = records[0], records[1:]
        names = [h.strip() for h in header]
        what = "the header row"
    else:
        names, what = list(columns), "task.columns"
    rows = []
    for fields, line in records:
        if len(fields) != len(names):
            raise DataError(
                f"{path} line {line}: {len(fields)} fields, but {what} names {len(names)} "
                f"({', '.join(names)}); fix the row, or set task.columns for a file without a header"
            )
        rows.append(Row(dict(zip(names, fields, strict=True)), line))
    return rows


def _json_rows(path: Path, text: str) -> list[Row]:
    if path.suffix == ".jsonl":
        lines = [(i, ln) for i, ln in enumerate(text.split("\n"), 1) if ln.strip()]
        records = []
        for i, ln in lines:
            try:
                records.append((json.loads(ln), i))
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {i}: not JSON ({err.msg}); one object per line") from err
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {err.lineno}: not JSON ({err.msg})") from err
        if not isinstance(data, list):
            raise DataError(
                f"{path}: a .json file must hold a list of records (for one per line, use .jsonl)"
            )
        records = [(r, i) for i, r in enumerate(data, 1)]  # record numbers: JSON has no line per record
    rows = []
    for record, line in records:
        if not isinstance(record, dict):
            raise DataError(f"{path} line {line}: a record must be an object with named fields")
        rows.append(Row({k: "" if v is None else str(v) for k, v in record.items()}, line))
    return rows


@register
class CustomTask(DataTask):
    """A labelled file described by `task.*` keys (see the module docstring and conf/task/custom.yaml)."""

    name = "custom"

    def __init__(self, options: dict | None = None) -> None:
        o = options or {}
        files = o.get("files") or {}
        if not files.get("train"):
            raise DataError("task=custom needs task.files.train=PATH (a .csv, .tsv, .jsonl or .json file)")
        words = o.get("label_words") or {}
        if not isinstance(words, dict) or not words or not all(isinstance(w, str) for w in words.values()):
            raise DataError(
                'task=custom needs task.label_words, one word per label value: {"0": " bad", "1": " good"}'
            )
        self.files = {split: files.get(split) for split in ("train", "test")}
        self.columns = o.get("columns")
        self.label_field = o.get("label_field") or "label"
        self.values = [str(v) for v in words]  # label value as written -> class index (its position)
        self.label_words = [str(w) for w in words.values()]
        template = o.get("template") or {}
        self.templates = {kind: template.get(kind) for kind in ("causal", "mlm")}
        self.fields = list(dict.fromkeys(f for t in self.templates.values() if t for f in placeholders(t)))
        fixed = o.get("sampling", "auto") in ("auto", "fixed")
        held = o.get("num_test", 1000) if fixed else o.get("test_cap", 1000)
        self.hold_out = int(held)  # test rows taken from the train file when there is no files.test

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
        rows = read_rows(path, self.columns)
        names = set(rows[0].values) if rows else set()
        for key in (self.label_field, *self.fields):
            if key not in names:
                fix = "task.label_field" if key == self.label_field else "the template's {" + key + "}"
                raise DataError(
                    f"{path}: no column '{key}' (its columns: {', '.join(sorted(names))}); fix {fix}"
                    + (", or name the columns with task.columns" if self.columns is None else "")
                )
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

    # ---- prompts ----------------------------------------------------------------------------------
    def _prompt(self, kind: str, ex: Example) -> str:
        template = self.templates[kind]
        if not template:
            model = {"mlm": "masked-LM", "causal": "causal"}[kind]
            raise DataError(f"task=custom has no {model} prompt: set task.template.{kind}")
        return template.format(**ex.fields, mask=MASK)

    def mlm_prompt(self, ex: Example) -> str:
        return self._prompt("mlm", ex)

    def causal_prompt(self, ex: Example) -> str:
        return self._prompt("causal", ex)
