"""TRL's dataset formats, recognised from a JSON record's keys (no other setting needed).

- prompt–completion: `{"prompt": "The sky is", "completion": " blue."}`: the completion, as written,
  continues the prompt (its leading space included); the stripped completion is the gold answer.
  TRL's conversational form, `{"prompt": [messages], "completion": [one assistant message]}`, is
  read as the conversation prompt + completion.
- conversational: `{"messages": [{"role": "user", "content": ...}, ..., {"role": "assistant", ...}]}`:
  every turn before the last assistant turn is the prompt (the objective renders it with the
  tokenizer's chat template and its generation prompt); the last assistant turn is the target.

Each parser returns the record's `Example` (None when its answer is empty: the caller counts and
drops those) or raises one DataError line naming the file, the line and the fix.
"""

from __future__ import annotations

from pathlib import Path

from data.base import DataError, Example
from data.rows import Row

ROLES = ("system", "user", "assistant", "tool")
PROMPT_COMPLETION, MESSAGES = "prompt-completion", "messages"


def trl_format(record: dict | None) -> str | None:
    """Which of TRL's formats a JSON record is in, from its keys (None: neither)."""
    if record is None:
        return None
    if "messages" in record:
        return MESSAGES
    return PROMPT_COMPLETION if {"prompt", "completion"} <= set(record) else None


def example(path: Path, row: Row, kind: str) -> Example | None:
    """The row as an Example of the file's TRL format `kind` (that of its first record)."""
    record = row.record or {}
    if trl_format(record) != kind:
        keys = "'messages'" if kind == MESSAGES else "'prompt' and 'completion'"
        raise DataError(
            f"{path} line {row.line}: no {keys} (the file is in TRL's {kind} format, from its first "
            "record); give every record the same keys"
        )
    if kind == MESSAGES:
        return conversation(path, row.line, record["messages"])
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, list):  # conversational prompt–completion
        return conversation(path, row.line, [*prompt, *(completion if isinstance(completion, list) else [])])
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(
            f"{path} line {row.line}: 'prompt' and 'completion' must be strings (or, conversational, "
            "lists of messages)"
        )
    if not completion.strip():
        return None
    meta = {"prompt": prompt, "target": completion, "line": row.line}
    return Example({"prompt": prompt}, answers=[completion.strip()], meta=meta)


def conversation(path: Path, line: int, messages: object) -> Example | None:
    """Turns before the last assistant turn as the prompt (`meta["messages"]`), that turn the target."""
    where = f"{path} line {line}"
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise DataError(f'{where}: messages must be a list of {{"role": ..., "content": "text"}} objects')
    for m in messages:
        if m["role"] not in ROLES:
            raise DataError(
                f"{where}: unknown role '{m['role']}' (allowed: {', '.join(ROLES)}); fix the message"
            )
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(
            f"{where}: the conversation has no assistant turn (its last one is the target); add one or "
            "drop the line"
        )
    if last != len(messages) - 1:
        raise DataError(
            f"{where}: turns follow the last assistant turn, which is the target; end the conversation "
            "with the assistant turn to learn"
        )
    content = messages[last]["content"]
    if not content.strip():
        return None
    prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    user = [m["content"] for m in prompt if m["role"] == "user"]
    return Example({"prompt": user[-1] if user else ""}, answers=[content.strip()],
                   meta={"messages": prompt, "target": content, "line": line})  # fmt: skip
