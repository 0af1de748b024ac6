"""Small string edits that prompt templates share."""

from __future__ import annotations

END_PUNCT = ".?!"


def lower_first(text: str) -> str:
    """LM-BFF's `sentl_`: lowercase the first character so a sentence can continue another."""
    return text[:1].lower() + text[1:]


def drop_final_punct(text: str) -> str:
    """LM-BFF's `sent-_`: the sentence without its final punctuation mark, so a prompt mark can follow."""
    return text[:-1] if text and not text[-1].isalnum() and not text[-1].isspace() else text


def as_sentence(text: str) -> str:
    """Stripped text ending in '.', '?' or '!' (a full stop is added when it has none)."""
    text = text.strip()
    return text if not text or text.endswith(tuple(END_PUNCT)) else text + "."
