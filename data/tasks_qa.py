"""Extractive/abstractive QA from MeZO's OPT suite: SQuAD v1.1 and DROP (generation, scored by F1/EM)."""

from __future__ import annotations

from pathlib import Path

from data.base import Example
from data.readers import read_json
from data.registry import register
from data.source import DataTask


class Generate(DataTask):
    """The model writes the answer after the prompt; `answers` holds every gold string (no leading space)."""

    task_type = "generate"

    @staticmethod
    def qa(fields: dict[str, str], answers: list[str]) -> Example | None:
        """None when no gold answer is left, so such questions never reach training or scoring."""
        golds = list(dict.fromkeys(a.strip() for a in answers if a.strip()))
        return Example(fields, answers=golds) if golds else None

    def read(self, path: Path) -> list[Example]:
        return [ex for ex in self.parse(read_json(path)) if ex is not None]

    def parse(self, data) -> list[Example | None]:
        raise NotImplementedError


@register
class SQuAD(Generate):
    """SQuAD v1.1 (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`).

    MeZO prompt: "Title: {title}\\nContext: {context}\\nQuestion: {question}\\nAnswer:".
    """

    name = "squad"
    hub_id = "rajpurkar/squad"
    splits = {"train": ["SQuAD/train-v1.1.json"], "test": ["SQuAD/dev-v1.1.json"]}

    def parse(self, data: dict) -> list[Example | None]:
        rows = []
        for article in data["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    answers = {"text": [a["text"] for a in qa["answers"]]}
                    rows.append(
                        {"title": article["title"], "context": para["context"], **qa, "answers": answers}
                    )
        return [self.from_hub(row) for row in rows]

    def from_hub(self, row: dict) -> Example | None:
        fields = {"title": row["title"], "context": row["context"], "question": row["question"].strip()}
        return self.qa(fields, list(row["answers"]["text"]))

    def causal_prompt(self, ex: Example) -> str:
        f = ex.fields
        return f"Title: {f['title']}\nContext: {f['context']}\nQuestion: {f['question']}\nAnswer:"


def drop_answer_strings(answer: dict) -> list[str]:
    """A DROP answer as text: the number, else each span, else the date as 'day month year'.

    Spans are separate gold strings, as in the hub copy (answers_spans), so
    naming any one of a multi-span answer scores as a match.
    """
    if answer.get("number"):
        return [str(answer["number"])]
    if answer.get("spans"):
        return list(answer["spans"])
    date = answer.get("date") or {}
    return [" ".join(str(date[k]) for k in ("day", "month", "year") if date.get(k))]


@register
class DROP(Generate):
    """DROP (`{query_id_prefix: {"passage", "qa_pairs": [{"question", "answer", "validated_answers"}]}}`).

    MeZO prompt: "Passage: {passage}\\nQuestion: {question}\\nAnswer:". Golds come from
    `answer` and every `validated_answers` entry.
    """

    name = "drop"
    hub_id = "ucinlp/drop"
    splits = {"train": ["DROP/drop_dataset_train.json"], "test": ["DROP/drop_dataset_dev.json"]}

    def parse(self, data: dict) -> list[Example | None]:
        return [
            self.qa(
                {"passage": item["passage"], "question": qa["question"].strip()},
                [s for a in [qa["answer"], *qa.get("validated_answers", [])] for s in drop_answer_strings(a)],
            )
            for item in data.values()
            for qa in item["qa_pairs"]
        ]

    def from_hub(self, row: dict) -> Example | None:
        fields = {"passage": row["passage"], "question": row["question"].strip()}
        return self.qa(fields, list(row["answers_spans"]["spans"]))

    def causal_prompt(self, ex: Example) -> str:
        return f"Passage: {ex.fields['passage']}\nQuestion: {ex.fields['question']}\nAnswer:"
