"""SuperGLUE tasks from MeZO's OPT suite: WiC, BoolQ, MultiRC, ReCoRD (causal prompts are MeZO's).

The local jsonl rows of WiC and BoolQ have the same keys as the hub rows, so
one row mapping serves both. The labelled evaluation set is `val` (SuperGLUE
test labels are hidden). None of these has a masked-LM prompt in either paper.
"""

from __future__ import annotations

import re
from pathlib import Path

from data.base import Example
from data.readers import read_jsonl
from data.registry import register
from data.source import DataTask
from data.text import as_sentence

PLACEHOLDER = "@placeholder"


class YesNo(DataTask):
    """Binary SuperGLUE task, label 0 = false/"No", 1 = true/"Yes"; hub copy at aps/super_glue."""

    label_words = [" No", " Yes"]  # for classification heads (num_labels) and masked-LM scoring
    causal_words = ["No", "Yes"]
    hub_id = "aps/super_glue"

    def read(self, path: Path) -> list[Example]:
        return [self.from_hub(row) for row in read_jsonl(path)]


@register
class WiC(YesNo):
    """Does `word` mean the same in both sentences? MeZO prompt, + "No" | "Yes":
    'Does the word "{word}" have the same meaning in these two sentences? Yes, No?\\n'
    '{sentence1}\\n{sentence2}\\n'
    """

    name = "wic"
    hub_config = "wic"
    splits = {"train": ["WiC/train.jsonl"], "test": ["WiC/val.jsonl"]}

    def from_hub(self, row: dict) -> Example:
        return Example({k: row[k] for k in ("sentence1", "sentence2", "word")}, int(row["label"]))

    def causal_prompt(self, ex: Example) -> str:
        f = ex.fields
        return (
            f'Does the word "{f["word"]}" have the same meaning in these two sentences? Yes, No?\n'
            f"{f['sentence1']}\n{f['sentence2']}\n"
        )

    def text(self, ex: Example) -> tuple[str, str]:
        return f"{ex.fields['word']}: {ex.fields['sentence1']}", ex.fields["sentence2"]


@register
class BoolQ(YesNo):
    """Yes/no question about a passage. MeZO prompt "{passage} {question}?" + " No" | " Yes".

    Offline only val.jsonl exists; train.jsonl (9,427 rows) must come from data.root or the hub.
    """

    name = "boolq"
    causal_words = [" No", " Yes"]
    hub_config = "boolq"
    splits = {"train": ["BoolQ/train.jsonl"], "test": ["BoolQ/val.jsonl"]}

    def from_hub(self, row: dict) -> Example:
        # question first: a classification head then truncates the passage, not the question
        return Example({"question": row["question"], "passage": row["passage"]}, int(row["label"]))

    def causal_prompt(self, ex: Example) -> str:
        return f"{ex.fields['passage']} {ex.fields['question']}?"


@register
class MultiRC(YesNo):
    """Is this answer to a question about a paragraph correct? One Example per answer option.

    MeZO prompt, + "No" | "Yes":
    '{paragraph}\\nQuestion: {question}\\nI found this answer "{answer}". Is that correct? Yes or No?\\n'
    The local jsonl nests passage -> questions -> answers; the hub rows are already flat.
    """

    name = "multirc"
    hub_config = "multirc"
    splits = {"train": ["MultiRC/train.jsonl"], "test": ["MultiRC/val.jsonl"]}

    def read(self, path: Path) -> list[Example]:
        out = []
        for doc in read_jsonl(path):
            passage = doc["passage"]
            for q in passage["questions"]:
                for a in q["answers"]:
                    row = {"paragraph": passage["text"], "question": q["question"], "answer": a["text"]}
                    out.append(self.from_hub({**row, "label": a["label"], "idx": {"question": q["idx"]}}))
        return out

    def from_hub(self, row: dict) -> Example:
        fields = {k: row[k] for k in ("paragraph", "question", "answer")}
        return Example(fields, int(row["label"]), meta={"question": row["idx"]["question"]})

    def causal_prompt(self, ex: Example) -> str:
        f = ex.fields
        return (
            f"{f['paragraph']}\nQuestion: {f['question']}\n"
            f'I found this answer "{f["answer"]}". Is that correct? Yes or No?\n'
        )

    def text(self, ex: Example) -> tuple[str, str]:
        return ex.fields["paragraph"], f"{ex.fields['question']} {ex.fields['answer']}"


@register
class ReCoRD(DataTask):
    """Cloze question over a news passage; the candidates are the passage's entities.

    As in MeZO, a candidate is scored by the likelihood of the query with the
    entity put in for @placeholder. The prompt is the passage (its @highlight
    lines made into sentences on a last line) then the query up to the
    placeholder; each candidate is the entity plus the rest of the query.
    SuperGLUE jsonl entity offsets are inclusive: text[start:end + 1].
    """

    name = "record"
    task_type = "multiple_choice"
    hub_id = "aps/super_glue"
    hub_config = "record"
    splits = {"train": ["ReCoRD/train.jsonl"], "test": ["ReCoRD/val.jsonl"]}

    def read(self, path: Path) -> list[Example]:
        out = []
        for doc in read_jsonl(path):
            text = doc["passage"]["text"]
            entities = [text[e["start"] : e["end"] + 1] for e in doc["passage"]["entities"]]
            for qa in doc["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                if (ex := self.cloze(text, entities, qa["query"], answers)) is not None:
                    out.append(ex)
        return out

    def from_hub(self, row: dict) -> Example | None:
        return self.cloze(row["passage"], row["entities"], row["query"], row["answers"])

    @staticmethod
    def cloze(text: str, entities: list[str], query: str, answers: list[str]) -> Example | None:
        """One Example, or None when no gold answer is among the entities (unlabelled rows)."""
        candidates = sorted(set(entities))
        gold = [i for i, entity in enumerate(candidates) if entity in answers]
        if not gold:
            return None
        body, *highlights = re.split(r"\s*@highlight\s*", text.strip())
        passage = body + ("\n" + " ".join(as_sentence(h) for h in highlights) if highlights else "")
        before, after = query.split(PLACEHOLDER, 1)
        space = " " if before[-1:].isspace() else ""
        return Example(
            {"passage": passage, "query": before.rstrip()},
            gold[0],
            candidates=[f"{space}{entity}{after}" for entity in candidates],
            meta={"gold": [candidates[i] for i in gold]},
        )

    def causal_prompt(self, ex: Example) -> str:
        return f"{ex.fields['passage']}\n{ex.fields['query']}"
