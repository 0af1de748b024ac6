"""Plain file-format readers shared by the task loaders.

Each returns raw rows (lists or dicts); turning rows into `Example`s is the
task's job. The research files are not all clean CSV: GLUE tsv files contain
unbalanced quote characters, so tab-separated files are split on tabs only,
never parsed with quoting rules.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """File text; a file that is not valid UTF-8 is read as Latin-1 (one BBC article has a bare 0xA3 '£')."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """Non-empty lines without their line ending.

    Splits on '\\n' only: `str.splitlines` would also break on form feeds and
    Unicode separators that occur inside some sentences.
    """
    return [line.rstrip("\r") for line in read_text(path, encoding).split("\n") if line.strip()]


def read_tsv(path: Path) -> list[list[str]]:
    """Tab-separated fields of every non-empty line (header included), with no quote handling."""
    return [line.split("\t") for line in read_lines(path)]


def read_csv(path: Path) -> list[list[str]]:
    """Rows of a real (quoted) CSV file such as LM-BFF's TREC csv."""
    with path.open(encoding="utf-8", newline="") as fh:
        return [row for row in csv.reader(fh) if row]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


def read_json(path: Path) -> Any:
    return json.loads(read_text(path))
