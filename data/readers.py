"""Plain file-format readers shared by the task loaders.

Each returns raw rows (lists or dicts); turning rows into `Example`s is the
task's job. The research files are not all clean CSV: GLUE tsv files contain
unbalanced quote characters, so tab-separated files are split on tabs only,
never parsed with quoting rules.

Text is decoded in `task.encoding` (set for the duration of a load with `decoding`).
Its default, `auto`, is UTF-8, except that a file holding no UTF-8 multi-byte
sequence at all and some bytes above 0x7F is read as Latin-1: that is a single-byte
file (one BBC article has a bare 0xA3 '£'), and Latin-1 reads each byte as one
character. A file mixing UTF-8 sequences with invalid bytes is ambiguous: decoding
it whole as Latin-1 would turn every UTF-8 character into mojibake, so it is a
DataError naming the file, the byte and the fix (`task.encoding=latin-1`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from data.base import DataError

AUTO = "auto"
_ENCODING: ContextVar[str] = ContextVar("encoding", default=AUTO)
# A well-formed UTF-8 multi-byte sequence: a lead byte and its continuation bytes.
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


@contextmanager
def decoding(encoding: str) -> Iterator[None]:
    """Read files in `encoding` (a Python codec name, or `auto`) inside this block."""
    token = _ENCODING.set(encoding)
    try:
        yield
    finally:
        _ENCODING.reset(token)


def read_text(path: Path, encoding: str | None = None) -> str:
    """File text in `encoding` (a task's own, where its files have a fixed one), else `task.encoding`."""
    data = path.read_bytes()
    codec = encoding or _ENCODING.get()
    try:
        return data.decode("utf-8" if codec == AUTO else codec)
    except UnicodeDecodeError as err:
        if codec == AUTO and not _UTF8_SEQUENCE.search(data):
            return data.decode("latin-1")
        byte = data[err.start : err.start + 1].hex()
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path} is not valid {'utf-8' if codec == AUTO else codec} (byte 0x{byte} at offset "
            f"{err.start}, line {line}): re-save it as UTF-8, or set task.encoding to its encoding (e.g. "
            "task.encoding=latin-1)"
        ) from err


def read_lines(path: Path, encoding: str | None = None) -> list[str]:
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
    return [row for row in csv.reader(io.StringIO(read_text(path), newline="")) if row]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(path)]


def read_json(path: Path) -> Any:
    return json.loads(read_text(path))
