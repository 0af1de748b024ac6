"""Single-sentence classification from LM-BFF's suite: SST-2, SST-5, TREC."""

from __future__ import annotations

import re
from pathlib import Path

from data.base import MASK, Example
from data.readers import read_csv, read_lines, read_tsv
from data.registry import register
from data.source import DataTask


def sentence(text: str, label: int) -> Example:
    return Example({"sentence": text.strip()}, int(label))


class Sentiment(DataTask):
    """Prompts shared by the SST tasks.

    Masked LM, LM-BFF `*cls**sent_0*_It_was*mask*.*sep+*`: "{sentence} It was{mask}."
    Causal, MeZO's SST-2 template: "{sentence} It was", continued by a label word.
    """

    def mlm_prompt(self, ex: Example) -> str:
        return f"{ex.fields['sentence']} It was{MASK}."

    def causal_prompt(self, ex: Example) -> str:
        return f"{ex.fields['sentence']} It was"


@register
class SST2(Sentiment):
    """GLUE SST-2: `sentence<TAB>label` with a header; GLUE's dev set is the labelled test set."""

    name = "sst2"
    label_words = [" terrible", " great"]
    hub_id = "stanfordnlp/sst2"
    splits = {"train": ["SST-2/train.tsv"], "test": ["SST-2/dev.tsv"]}

    def read(self, path: Path) -> list[Example]:
        header, *rows = read_tsv(path)
        text, label = header.index("sentence"), header.index("label")
        return [sentence(row[text], int(row[label])) for row in rows]

    def from_hub(self, row: dict) -> Example:
        return sentence(row["sentence"], row["label"])


@register
class SST5(Sentiment):
    """SST fine-grained, 0 very negative to 4 very positive; `label<TAB>sentence` or `label sentence`."""

    name = "sst5"
    label_words = [" terrible", " bad", " okay", " good", " great"]
    hub_id = "SetFit/sst5"
    hub_splits = {"train": "train", "test": "test"}
    splits = {
        "train": ["sst-5/train.tsv", "sst-5/stsa.fine.train"],
        "test": ["sst-5/test.tsv", "sst-5/stsa.fine.test"],
    }

    def read(self, path: Path) -> list[Example]:
        pairs = (re.split(r"[\t ]", line, maxsplit=1) for line in read_lines(path))
        return [sentence(text, int(label)) for label, text in pairs]

    def from_hub(self, row: dict) -> Example:
        return sentence(row["text"], row["label"])


@register
class TREC(DataTask):
    """TREC question type, 6 coarse classes in LM-BFF's order.

    Masked LM, LM-BFF `*cls**mask*:*+sent_0**sep+*`: "{mask}: {question}".
    Causal: "{question} Answer type:" + label word. Neither paper runs TREC on
    a causal LM, so this one is ours, kept close to the masked prompt.
    Layouts: LM-BFF csv `label,question` (no header) or raw UIUC `COARSE:fine question` (Latin-1).
    """

    name = "trec"
    coarse = ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"]  # LM-BFF label ids 0..5
    hub_coarse = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]  # CogComp/trec coarse_label ids 0..5
    label_words = [" Description", " Entity", " Expression", " Human", " Location", " Number"]
    hub_id = "CogComp/trec"
    hub_splits = {"train": "train", "test": "test"}
    splits = {"train": ["trec/train.csv", "trec/TREC.train"], "test": ["trec/test.csv", "trec/TREC.test"]}

    def read(self, path: Path) -> list[Example]:
        if path.suffix == ".csv":
            return [self.question(text, int(label)) for label, text in read_csv(path)]
        tagged = (line.split(" ", 1) for line in read_lines(path, encoding="iso-8859-1"))
        return [self.question(text, self.coarse.index(tag.split(":")[0])) for tag, text in tagged]

    def from_hub(self, row: dict) -> Example:
        return self.question(row["text"], self.coarse.index(self.hub_coarse[row["coarse_label"]]))

    @staticmethod
    def question(text: str, label: int) -> Example:
        return Example({"question": text.strip()}, label)

    def mlm_prompt(self, ex: Example) -> str:
        return f"{MASK}: {ex.fields['question']}"

    def causal_prompt(self, ex: Example) -> str:
        return f"{ex.fields['question']} Answer type:"


@register
class SST2Review(SST2):
    """SST-2 with a prompt small instruction-tuned LMs follow: "Review: {sentence}\\nSentiment:".

    MeZO's "It was" prompt leaves SmolLM2-135M at chance zero-shot (52.7% on 300 dev
    sentences) while this one scores 77%; the data and masked-LM prompt are SST-2's.
    """

    name = "sst2_review"
    causal_words = [" negative", " positive"]

    def causal_prompt(self, ex: Example) -> str:
        return f"Review: {ex.fields['sentence']}\nSentiment:"
