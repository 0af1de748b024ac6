"""The records of a user's file (task=custom): csv/tsv/jsonl/json as column -> text, with line numbers.

Formats by extension: `.csv` (real CSV: quoted fields may hold commas and newlines), `.tsv` (split
on tabs only, never quote-parsed, as GLUE's files need: their quotes are unbalanced), `.jsonl`
(one object per line), `.json` (a list of objects). A UTF-8 BOM and blank lines are skipped. A
JSON record also keeps its values as parsed (`Row.record`): TRL's conversations are lists.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from data.base import DataError
from data.readers import read_text

FORMATS = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class Row:
    values: dict[str, str]
    line: int  # where the record starts in its file (1-based), for error messages
    record: dict | None = None  # a JSON record as parsed (lists and all)


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
        rows.append(Row({k: "" if v is None else str(v) for k, v in record.items()}, line, record))
    return rows
