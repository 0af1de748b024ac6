"""SQuAD-style F1/EM and accuracy against values worked out by hand."""

from __future__ import annotations

import pytest

from data.metrics import accuracy, exact_match, f1_score, normalize_answer


def test_normalize_answer_drops_case_punctuation_and_articles() -> None:
    assert normalize_answer("  The Eiffel-Tower, in  a  PARIS!") == "eiffeltower in paris"
    assert normalize_answer("An apple and the theatre") == "apple and theatre"  # "the" inside a word stays


def test_f1_partial_overlap() -> None:
    # pred tokens {eiffel, tower}; gold {eiffel, tower, in, paris}: P = 2/2, R = 2/4
    assert f1_score("the Eiffel tower", ["Eiffel Tower in Paris"]) == pytest.approx(2 * (1 * 0.5) / 1.5)
    assert f1_score("the Eiffel tower", ["Eiffel Tower in Paris"]) == pytest.approx(0.6667, abs=1e-4)


def test_f1_takes_the_best_gold_and_counts_repeated_tokens_once_each() -> None:
    assert f1_score("Paris", ["London", "paris.", "in Paris"]) == 1.0
    # pred {new, new, york}; gold {new, york}: common 2, P = 2/3, R = 1 -> F1 = 0.8
    assert f1_score("New New York", ["New York"]) == pytest.approx(0.8)
    assert f1_score("Berlin", ["Paris"]) == 0.0
    assert f1_score("Berlin", []) == 0.0


def test_exact_match() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    assert exact_match("1990", ["May 1990", "1990"]) == 1.0


def test_accuracy() -> None:
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([1, 0, 1], [1, 0])
