"""Scores as the SQuAD v1.1 evaluation script (and MeZO after it) defines them.

Generation tasks compare a free-text answer with several gold strings, so
both metrics take the best match over `ground_truths`. Normalisation makes
"The Eiffel Tower." and "eiffel tower" equal: lowercase, drop punctuation and
the articles a/an/the, squeeze whitespace.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truths: Sequence[str]) -> float:
    """Token F1 against the best-matching gold answer (0 when there is none)."""
    return max((token_f1(prediction, truth) for truth in ground_truths), default=0.0)


def exact_match(prediction: str, ground_truths: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(truth) for truth in ground_truths))


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction correct; MultiRC is scored per answer option, so this serves it too."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels) if labels else 0.0
