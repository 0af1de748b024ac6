"""Sentence-pair inference from LM-BFF's suite: SNLI, MNLI, RTE.

All three share LM-BFF's masked-LM template `*cls**sent-_0*?*mask*,*+sentl_1**sep+*`.
LM-BFF encodes one-character text parts ("?", ",") with no space before them,
so as a string it reads:

    "{premise without its final punctuation}?{mask}, {hypothesis with a lowercase first letter}"

e.g. "A man is sleeping?{mask}, a person rests." The label word (" Yes", ...) fills the mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from data.base import MASK, Example
from data.readers import read_jsonl, read_tsv
from data.registry import register
from data.source import DataTask
from data.text import drop_final_punct, lower_first

NO_GOLD = "-"  # SNLI/MNLI rows whose annotators did not agree; the official sets leave them out


class PairTask(DataTask):
    """Premise/hypothesis pairs with string labels, from GLUE tsv or jsonl files.

    GLUE tsv: columns named by the header, the gold label in the LAST field
    (some SNLI rows carry more fields than the header names). jsonl: the keys
    in `jsonl_keys`.
    """

    labels: ClassVar[list[str]]  # label names in label-id order
    jsonl_keys: ClassVar[tuple[str, str, str]] = ("sentence1", "sentence2", "gold_label")

    def read(self, path: Path) -> list[Example]:
        if path.suffix == ".tsv":
            header, *rows = read_tsv(path)
            first, second = header.index("sentence1"), header.index("sentence2")
            triples = [(row[first], row[second], row[-1]) for row in rows]
        else:
            keys = self.jsonl_keys
            triples = [(row[keys[0]], row[keys[1]], row[keys[2]]) for row in read_jsonl(path)]
        return [self.pair(p, h, self.labels.index(gold)) for p, h, gold in triples if gold != NO_GOLD]

    def from_hub(self, row: dict) -> Example | None:
        return self.pair(row["premise"], row["hypothesis"], row["label"]) if row["label"] >= 0 else None

    @staticmethod
    def pair(premise: str, hypothesis: str, label: int) -> Example:
        return Example({"premise": premise.strip(), "hypothesis": hypothesis.strip()}, int(label))

    def mlm_prompt(self, ex: Example) -> str:
        premise, hypothesis = ex.fields["premise"], ex.fields["hypothesis"]
        return f"{drop_final_punct(premise)}?{MASK}, {lower_first(hypothesis)}"


class ThreeWay(PairTask):
    """Entailment / neutral / contradiction -> " Yes" / " Maybe" / " No" (LM-BFF).

    Causal: MeZO's template for the 3-way CommitmentBank task, as MeZO has no SNLI/MNLI one:
    'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\\n' + "Yes" | "Maybe" | "No".
    """

    labels = ["entailment", "neutral", "contradiction"]
    label_words = [" Yes", " Maybe", " No"]
    causal_words = ["Yes", "Maybe", "No"]

    def causal_prompt(self, ex: Example) -> str:
        f = ex.fields
        return f'Suppose {f["premise"]} Can we infer that "{f["hypothesis"]}"? Yes, No, or Maybe?\n'


@register
class SNLI(ThreeWay):
    """SNLI 1.0: the original jsonl (train may be the first-100k excerpt; see info.source) or GLUE tsv."""

    name = "snli"
    hub_id = "stanfordnlp/snli"
    hub_splits = {"train": "train", "test": "test"}
    splits = {
        "train": [
            "SNLI/original/snli_1.0_train.jsonl",
            "SNLI/original/snli_1.0_train_first100k.jsonl",
            "SNLI/train.tsv",
        ],
        "test": ["SNLI/original/snli_1.0_test.jsonl", "SNLI/test.tsv"],
    }


@register
class MNLI(ThreeWay):
    """MultiNLI, matched: GLUE `MNLI/train.tsv` / `dev_matched.tsv` (dev_matched is the labelled test set).

    Offline only LM-BFF's k-shot files exist; they are the fallback candidates,
    picked by data seed: 48 train rows, and 48 dev_matched rows (sampled from
    MNLI train, not the real dev set) standing in as test. info.source says which was used.
    """

    name = "mnli"
    hub_id = "nyu-mll/glue"
    hub_config = "mnli"
    hub_splits = {"train": "train", "test": "validation_matched"}
    splits = {
        "train": ["MNLI/train.tsv", "MNLI/lmbff-k-shot/16-{seed}/train.tsv"],
        "test": ["MNLI/dev_matched.tsv", "MNLI/lmbff-k-shot/16-{seed}/dev_matched.tsv"],
    }


@register
class RTE(PairTask):
    """RTE from GLUE tsv (`index sentence1 sentence2 label`) or SuperGLUE jsonl; dev/val is the test set.

    Masked LM: the LM-BFF pair template (module docstring), entailment -> " Yes", not_entailment -> " No".
    Causal, MeZO: '{premise}\\nDoes this mean that "{hypothesis}" is true? Yes or No?\\n' + "Yes" | "No".
    """

    name = "rte"
    labels = ["entailment", "not_entailment"]
    label_words = [" Yes", " No"]
    causal_words = ["Yes", "No"]
    jsonl_keys = ("premise", "hypothesis", "label")
    hub_id = "aps/super_glue"
    hub_config = "rte"
    splits = {"train": ["RTE/train.tsv", "RTE/train.jsonl"], "test": ["RTE/dev.tsv", "RTE/val.jsonl"]}

    def causal_prompt(self, ex: Example) -> str:
        f = ex.fields
        return f'{f["premise"]}\nDoes this mean that "{f["hypothesis"]}" is true? Yes or No?\n'
