"""Every template renders the exact string its paper prescribes, checked against hand-written prompts."""

from __future__ import annotations

import pytest

from data import MASK, DataError, Example, build_task
from data.tasks_offline import lede


def ex(label: int | None = None, **fields: str) -> Example:
    return Example(dict(fields), label)


def test_sst_prompts_follow_lm_bff_and_mezo() -> None:
    sst2, sst5 = build_task("sst2"), build_task("sst5")
    e = ex(1, sentence="a gorgeous , witty film")
    assert sst2.mlm_prompt(e) == "a gorgeous , witty film It was{mask}."
    assert sst2.causal_prompt(e) == "a gorgeous , witty film It was"
    assert sst2.causal_candidates(e) == [" terrible", " great"]
    assert sst5.mlm_prompt(e) == "a gorgeous , witty film It was{mask}."
    assert sst5.label_words == [" terrible", " bad", " okay", " good", " great"]
    assert MASK == "{mask}"


@pytest.mark.parametrize("name", ["snli", "mnli"])
def test_three_way_nli_prompts(name: str) -> None:
    task = build_task(name)
    e = ex(0, premise="A man is sleeping on a bench.", hypothesis="A person rests.")
    # LM-BFF *cls**sent-_0*?*mask*,*+sentl_1**sep+*: no space before "?" or ","
    assert task.mlm_prompt(e) == "A man is sleeping on a bench?{mask}, a person rests."
    assert task.label_words == [" Yes", " Maybe", " No"]
    assert task.causal_prompt(e) == (
        'Suppose A man is sleeping on a bench. Can we infer that "A person rests."? Yes, No, or Maybe?\n'
    )
    assert task.causal_candidates(e) == ["Yes", "Maybe", "No"]
    assert task.text(e) == ("A man is sleeping on a bench.", "A person rests.")


def test_nli_prompt_keeps_a_premise_without_final_punctuation() -> None:
    e = ex(1, premise="Two dogs run", hypothesis="Animals are outside.")
    assert build_task("snli").mlm_prompt(e) == "Two dogs run?{mask}, animals are outside."


def test_rte_prompts() -> None:
    rte = build_task("rte")
    e = ex(
        1,
        premise="No Weapons of Mass Destruction Found in Iraq Yet.",
        hypothesis="Weapons of Mass Destruction Found in Iraq.",
    )
    assert rte.mlm_prompt(e) == (
        "No Weapons of Mass Destruction Found in Iraq Yet?{mask}, weapons of Mass Destruction Found in Iraq."
    )
    assert rte.label_words == [" Yes", " No"]
    assert rte.causal_prompt(e) == (
        "No Weapons of Mass Destruction Found in Iraq Yet.\n"
        'Does this mean that "Weapons of Mass Destruction Found in Iraq." is true? Yes or No?\n'
    )
    assert rte.causal_candidates(e) == ["Yes", "No"]


def test_trec_prompt_and_words_in_lm_bff_label_order() -> None:
    trec = build_task("trec")
    e = ex(0, question="What does ciao mean ?")
    assert trec.mlm_prompt(e) == "{mask}: What does ciao mean ?"
    assert trec.causal_prompt(e) == "What does ciao mean ? Answer type:"
    assert trec.label_words == [" Description", " Entity", " Expression", " Human", " Location", " Number"]


def test_wic_prompt() -> None:
    wic = build_task("wic")
    e = ex(
        0,
        sentence1="Do you want to come over to my place later?",
        sentence2="A political system with no place for the less prominent groups.",
        word="place",
    )
    assert wic.causal_prompt(e) == (
        'Does the word "place" have the same meaning in these two sentences? Yes, No?\n'
        "Do you want to come over to my place later?\n"
        "A political system with no place for the less prominent groups.\n"
    )
    assert wic.causal_candidates(e) == ["No", "Yes"]


def test_boolq_prompt() -> None:
    boolq = build_task("boolq")
    e = ex(1, question="is the sky blue", passage="The sky is blue on clear days.")
    assert boolq.causal_prompt(e) == "The sky is blue on clear days. is the sky blue?"
    assert boolq.causal_candidates(e) == [" No", " Yes"]
    assert boolq.text(e) == ("is the sky blue", "The sky is blue on clear days.")


def test_multirc_prompt() -> None:
    multirc = build_task("multirc")
    e = ex(1, paragraph="Forces cause changes in motion.", question="What changes motion?", answer="A force")
    assert multirc.causal_prompt(e) == (
        "Forces cause changes in motion.\nQuestion: What changes motion?\n"
        'I found this answer "A force". Is that correct? Yes or No?\n'
    )
    assert multirc.causal_candidates(e) == ["No", "Yes"]


def test_record_prompt_runs_to_the_placeholder_and_candidates_finish_the_query() -> None:
    record = build_task("record")
    text = "The cat sat in Paris with Tom.\n@highlight\nTom visits Paris\n@highlight\nCats like France!"
    e = record.cloze(text, ["Paris", "Tom", "Paris"], "Tom flew to @placeholder on Monday.", ["Paris"])
    assert (
        record.causal_prompt(e)
        == "The cat sat in Paris with Tom.\nTom visits Paris. Cats like France!\nTom flew to"
    )
    assert record.causal_candidates(e) == [" Paris on Monday.", " Tom on Monday."]
    assert e.label == 0 and record.task_type == "multiple_choice"
    first = record.cloze(text, ["Paris", "Tom"], "@placeholder was happy.", ["Tom"])
    assert record.causal_prompt(first).endswith("Cats like France!\n")
    assert record.causal_candidates(first) == ["Paris was happy.", "Tom was happy."] and first.label == 1
    assert record.cloze(text, ["Paris"], "@placeholder left.", []) is None  # unlabelled row


def test_squad_and_drop_prompts() -> None:
    squad, drop = build_task("squad"), build_task("drop")
    e = ex(None, title="Paris", context="Paris is the capital of France.", question="What is the capital?")
    assert squad.causal_prompt(e) == (
        "Title: Paris\nContext: Paris is the capital of France.\nQuestion: What is the capital?\nAnswer:"
    )
    d = ex(None, passage="The Bears scored 3 touchdowns.", question="How many touchdowns?")
    assert (
        drop.causal_prompt(d)
        == "Passage: The Bears scored 3 touchdowns.\nQuestion: How many touchdowns?\nAnswer:"
    )
    assert squad.task_type == drop.task_type == "generate"


def test_bbcnews_prompts_and_lede() -> None:
    bbc = build_task("bbcnews")
    e = ex(3, text="Mido makes third apology. Ahmed Hossam has apologised.")
    assert bbc.causal_prompt(e) == "Article: Mido makes third apology. Ahmed Hossam has apologised.\nTopic:"
    assert bbc.mlm_prompt(e) == "Mido makes third apology. Ahmed Hossam has apologised. Topic:{mask}."
    assert bbc.causal_candidates(e) == [" business", " entertainment", " politics", " sport", " tech"]
    article = "Big win\n\nThe team won by two goals. Fans cheered all night long. Then they slept."
    assert lede(article, max_words=13) == "Big win. The team won by two goals. Fans cheered all night long."
    assert lede(article, max_words=6) == "Big win. The team won by"  # a too-long first sentence is cut


def test_tasks_without_a_masked_prompt_say_so() -> None:
    with pytest.raises(DataError, match="wic has no masked-LM prompt.*model.kind=causal"):
        build_task("wic").mlm_prompt(ex(0, sentence1="a", sentence2="b", word="c"))
