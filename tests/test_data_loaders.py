"""Loaders read every local layout: real files give the official row counts, small files test the rest."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from data import TASKS, DataError, Request, build_task, load_task_data
from data.source import DataTask

SHARED = Path(
    os.environ.get("ZO_DATA_ROOT") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
)


@pytest.fixture(scope="module")
def shared() -> Path:
    if not (SHARED / "SOURCES.md").is_file():
        pytest.skip(f"real datasets not found at {SHARED} (set ZO_DATA_ROOT to the shared datasets folder)")
    return SHARED


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach for the hub in tests: a missing file must fail fast with the one-line DataError."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def counts(name: str, root: Path) -> tuple[int, int]:
    task = build_task(name)
    return len(task.load_split("train", root)), len(task.load_split("test", root))


@pytest.mark.parametrize(
    ("name", "train", "test"),
    [
        ("sst2", 67_349, 872),
        ("sst5", 8_544, 2_210),
        ("trec", 5_452, 500),
        ("rte", 2_490, 277),
        ("snli", 99_890, 9_824),  # train: the first 100k rows less the 110 marked "-"
        ("wic", 5_428, 638),
        ("multirc", 27_243, 4_848),  # answer options
        ("bbcnews", 1_780, 445),  # 2,225 articles, 80/20
    ],
)
def test_official_row_counts(name: str, train: int, test: int, shared: Path) -> None:
    assert counts(name, shared) == (train, test)


def test_boolq_val_is_complete(shared: Path) -> None:
    val = build_task("boolq").load_split("test", shared)
    assert len(val) == 3_270
    assert Counter(e.label for e in val) == {1: 2_033, 0: 1_237}


def test_label_encodings_match_the_documented_counts(shared: Path) -> None:
    assert Counter(e.label for e in build_task("sst2").load_split("test", shared)) == {0: 428, 1: 444}
    trec = Counter(e.label for e in build_task("trec").load_split("train", shared))
    assert trec == {0: 1162, 1: 1250, 2: 86, 3: 1223, 4: 835, 5: 896}  # DESC ENTY ABBR HUM LOC NUM
    rte = Counter(e.label for e in build_task("rte").load_split("test", shared))
    assert rte == {0: 146, 1: 131}  # entailment, not_entailment
    snli = Counter(e.label for e in build_task("snli").load_split("test", shared))
    assert snli == {0: 3_368, 1: 3_219, 2: 3_237}  # entailment, neutral, contradiction
    multirc = Counter(e.label for e in build_task("multirc").load_split("test", shared))
    assert multirc == {0: 2_773, 1: 2_075}


def test_first_rows_read_exactly(shared: Path) -> None:
    sst2 = build_task("sst2").load_split("train", shared)[0]
    assert (sst2.fields, sst2.label) == ({"sentence": "hide new secretions from the parental units"}, 0)
    wic = build_task("wic").load_split("train", shared)[0]
    assert wic.fields["word"] == "place" and wic.label == 0
    rte = build_task("rte").load_split("train", shared)[0]
    assert rte.fields == {
        "premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "hypothesis": "Weapons of Mass Destruction Found in Iraq.",
    }
    assert rte.label == 1
    multirc = build_task("multirc").load_split("test", shared)[0]
    assert multirc.fields["question"].startswith("Would the mass of a baseball affect")
    assert (multirc.fields["answer"], multirc.label) == ("No", 0)


@pytest.mark.parametrize(
    ("name", "first", "second"),
    [
        ("trec", "trec/train.csv", "trec/TREC.train"),  # LM-BFF csv vs raw UIUC labels
        ("trec", "trec/test.csv", "trec/TREC.test"),
        ("sst5", "sst-5/train.tsv", "sst-5/stsa.fine.train"),  # tab vs space
    ],
)
def test_alternative_layouts_give_the_same_examples(name: str, first: str, second: str, shared: Path) -> None:
    task = build_task(name)
    a, b = task.read(shared / first), task.read(shared / second)
    assert [(e.fields, e.label) for e in a] == [(e.fields, e.label) for e in b]


def test_rte_glue_tsv_and_superglue_jsonl_agree_on_labels(shared: Path) -> None:
    rte = build_task("rte")
    tsv, jsonl = rte.read(shared / "RTE/train.tsv"), rte.read(shared / "RTE/train.jsonl")
    assert [e.label for e in tsv] == [e.label for e in jsonl]


def test_bbcnews_reads_title_and_lede(shared: Path) -> None:
    train = build_task("bbcnews").load_split("train", shared) + build_task("bbcnews").load_split(
        "test", shared
    )
    by_file = {e.meta["file"]: e for e in train}
    assert len(by_file) == 2_225
    first = by_file["business/001.txt"]
    assert first.fields["text"] == (
        "Ad sales boost Time Warner profit. Quarterly profits at US media giant TimeWarner jumped 76% to "
        "$1.13bn (£600m) for the three months to December, from $639m year-earlier."
    )
    assert first.label == 0
    assert max(len(e.fields["text"].split()) for e in train) <= 40
    assert by_file["sports/199.txt"].label == 3  # the one file that is not UTF-8 (a Latin-1 '£') still reads


def test_bbcnews_reads_a_folder_under_root(tmp_path: Path) -> None:
    for topic in ("business", "entertainment", "politics", "sport", "tech"):
        (tmp_path / "bbcnews" / topic).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "bbcnews" / topic / f"{i:03}.txt").write_text(
                f"{topic} title {i}\n\nBody {i}. More.\n"
            )
    task = build_task("bbcnews")
    fetched = task.fetch("test", tmp_path)
    assert fetched.source == f"local:{tmp_path / 'bbcnews'}"
    assert len(fetched.examples) == 5 and len(task.load_split("train", tmp_path)) == 20
    assert all(re.fullmatch(r"\w+ title \d\. Body \d\. More\.", e.fields["text"]) for e in fetched.examples)


# ---- layouts with no real file offline: small files in the official layout -------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER.replace(
    "label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)


def test_mnli_glue_tsv_uses_header_columns_and_last_field(tmp_path: Path) -> None:
    parse = "\t".join(["( x )"] * 4)
    votes = "\t".join(["neutral", "neutral", "entailment", "neutral", "neutral"])
    write(
        tmp_path / "MNLI/train.tsv",
        MNLI_TRAIN_HEADER
        + f"0\t1\t1e\tfiction\t{parse}\tThat's all right.\tThat's fine.\tentailment\tentailment\n"
        + f'1\t2\t2c\tslate\t{parse}\tIt rained "a lot".\tIt was dry.\tcontradiction\tcontradiction\n',
    )
    write(
        tmp_path / "MNLI/dev_matched.tsv",
        MNLI_DEV_HEADER
        + f"0\t3\t3n\ttravel\t{parse}\tA walk.\tA long walk.\t{votes}\tneutral\n"
        + f"1\t4\t4x\ttravel\t{parse}\tNo agreement.\tNone.\tneutral\tentailment\tcontradiction\t-\t-\t-\n",
    )
    task = build_task("mnli")
    train, test = task.load_split("train", tmp_path), task.load_split("test", tmp_path)
    assert [(e.fields["premise"], e.fields["hypothesis"], e.label) for e in train] == [
        ("That's all right.", "That's fine.", 0),
        ('It rained "a lot".', "It was dry.", 2),
    ]
    assert [(e.fields["premise"], e.label) for e in test] == [("A walk.", 1)]  # "-" (no gold) dropped


def test_mnli_falls_back_to_lm_bff_kshot_files_of_the_data_seed(shared: Path) -> None:
    data = load_task_data(
        build_task("mnli"), shared, Request(sampling="kshot", k=16, test_cap=1000, data_seed=13)
    )
    assert data.info["source"]["train"] == f"local:{shared / 'MNLI/lmbff-k-shot/16-13/train.tsv'}"
    assert data.info["source"]["test"].endswith("MNLI/lmbff-k-shot/16-13/dev_matched.tsv")
    assert data.info["per_class"]["train"] == {"Yes": 16, "Maybe": 16, "No": 16}
    assert len(data.test) == 48


def test_boolq_train_jsonl(tmp_path: Path) -> None:
    rows = [
        {"question": "is water wet", "passage": "Water is wet.", "idx": 0, "label": True},
        {"question": "is fire cold", "passage": "Fire is hot.", "idx": 1, "label": False},
    ]
    write_jsonl(tmp_path / "BoolQ/train.jsonl", rows)
    train = build_task("boolq").load_split("train", tmp_path)
    assert [(e.fields, e.label) for e in train] == [
        ({"question": "is water wet", "passage": "Water is wet."}, 1),
        ({"question": "is fire cold", "passage": "Fire is hot."}, 0),
    ]


def test_record_superglue_jsonl_with_inclusive_entity_offsets(tmp_path: Path) -> None:
    text = "Ann met Bob in Rome.\n@highlight\nAnn and Bob meet"
    doc = {
        "idx": 0,
        "passage": {
            "text": text,
            "entities": [
                {"start": 0, "end": 2},
                {"start": 8, "end": 10},
                {"start": 15, "end": 18},
                {"start": 32, "end": 34},
            ],
        },
        "qas": [
            {
                "query": "@placeholder is in Italy.",
                "answers": [{"start": 15, "end": 18, "text": "Rome"}],
                "idx": 0,
            },
            {
                "query": "Ann greeted @placeholder.",
                "answers": [{"start": 8, "end": 10, "text": "Bob"}],
                "idx": 1,
            },
            {"query": "No answer for @placeholder.", "answers": [], "idx": 2},
        ],
    }
    write_jsonl(tmp_path / "ReCoRD/train.jsonl", [doc])
    task = build_task("record")
    first, second = task.load_split("train", tmp_path)
    assert first.candidates == ["Ann is in Italy.", "Bob is in Italy.", "Rome is in Italy."]
    assert first.label == 2 and first.meta["gold"] == ["Rome"]
    assert task.causal_prompt(first) == "Ann met Bob in Rome.\nAnn and Bob meet.\n"
    assert task.causal_prompt(second) == "Ann met Bob in Rome.\nAnn and Bob meet.\nAnn greeted"
    assert task.causal_candidates(second) == [" Ann.", " Bob.", " Rome."] and second.label == 1


def test_squad_v11_json(tmp_path: Path) -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "Eiffel_Tower",
                "paragraphs": [
                    {
                        "context": "The Eiffel Tower is in Paris.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Where is the tower? ",
                                "answers": [
                                    {"answer_start": 23, "text": "Paris"},
                                    {"answer_start": 23, "text": "Paris"},
                                    {"answer_start": 19, "text": "in Paris"},
                                ],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    write(tmp_path / "SQuAD/dev-v1.1.json", json.dumps(squad))
    [e] = build_task("squad").load_split("test", tmp_path)
    assert e.fields == {
        "title": "Eiffel_Tower",
        "context": "The Eiffel Tower is in Paris.",
        "question": "Where is the tower?",
    }
    assert e.answers == ["Paris", "in Paris"] and e.label is None


def test_drop_json_number_spans_date_and_validated_answers(tmp_path: Path) -> None:
    no_date = {"day": "", "month": "", "year": ""}
    drop = {
        "nfl_1": {
            "passage": "The Bears won 3 games in May 1990.",
            "qa_pairs": [
                {
                    "question": "How many games?",
                    "query_id": "a",
                    "answer": {"number": "3", "date": no_date, "spans": []},
                    "validated_answers": [{"number": "", "date": no_date, "spans": ["three"]}],
                },
                {
                    "question": "Who won?",
                    "query_id": "b",
                    "answer": {"number": "", "date": no_date, "spans": ["Bears", "the Bears"]},
                },
                {
                    "question": "When?",
                    "query_id": "c",
                    "answer": {
                        "number": "",
                        "date": {"day": "", "month": "May", "year": "1990"},
                        "spans": [],
                    },
                },
            ],
        },
    }
    write(tmp_path / "DROP/drop_dataset_dev.json", json.dumps(drop))
    got = build_task("drop").load_split("test", tmp_path)
    assert [e.answers for e in got] == [["3", "three"], ["Bears", "the Bears"], ["May 1990"]]
    assert got[0].fields == {"passage": "The Bears won 3 games in May 1990.", "question": "How many games?"}


# ---- failures -------------------------------------------------------------------------------------------


def test_missing_data_names_hub_id_local_path_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_task("boolq").load_split("train", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "aps/super_glue/boolq" in msg and str(tmp_path / "BoolQ/train.jsonl") in msg
    assert "HF_DATASETS_OFFLINE=1" in msg and "data.root=" in msg and "ZO_DATA_ROOT" in msg


def test_missing_root_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError, match=r"sst2: no train data.*data.root is not set.*stanfordnlp/sst2.*HF_HUB_OFFLINE"
    ):
        load_task_data(
            build_task("sst2"),
            None,
            Request(sampling="fixed", k=1, num_train=1, num_dev=1, num_test=1, test_cap=1, data_seed=0),
        )


def test_malformed_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "SST-2/train.tsv", "text\tlabel\nfine film\t1\n")
    with pytest.raises(DataError, match=f"{path} is not in the layout task sst2 expects"):
        build_task("sst2").load_split("train", tmp_path)


def test_unknown_task_lists_the_choices() -> None:
    with pytest.raises(DataError) as err:
        build_task("sst3")
    assert str(err.value) == f"unknown task 'sst3'; choose one of: {', '.join(sorted(TASKS))}"
    assert (
        "bbcnews, boolq, custom, drop, mnli, multirc, quadratic, record, rte, snli, squad, sst2, "
        "sst2_review, sst5, trec, wic" in str(err.value)
    )


def test_every_file_task_has_hub_id_and_paths_for_both_splits() -> None:
    for name, cls in TASKS.items():
        if issubclass(cls, DataTask) and name not in ("bbcnews", "custom"):  # custom: the user's own files
            assert cls.hub_id and set(cls.splits) == {"train", "test"}, name
            assert set(cls.hub_splits) == {"train", "test"}, name


# ---- hub path (the network is mocked: only the row mapping and the error handling are checked) ----------

HUB_ROWS = {
    ("stanfordnlp/snli", None, "train"): [
        {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
        {"premise": "A cat naps.", "hypothesis": "Dogs bark.", "label": -1},  # no gold: dropped
    ],
    ("CogComp/trec", None, "test"): [{"text": "What is AI ?", "coarse_label": 0, "fine_label": 0}],  # ABBR
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    import datasets

    import data.source

    calls: list[tuple] = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None):
        calls.append((path, name, split))
        if (path, name, split) not in HUB_ROWS:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub\nsecond line")
        return HUB_ROWS[(path, name, split)]

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(data.source, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_rows_map_to_examples_when_no_local_file(tmp_path: Path, fake_hub: list[tuple]) -> None:
    snli = build_task("snli").fetch("train", tmp_path)
    assert snli.source == "hub:stanfordnlp/snli:train"
    assert [(e.fields, e.label) for e in snli.examples] == [
        ({"premise": "A dog runs.", "hypothesis": "An animal moves."}, 0)
    ]
    [trec] = build_task("trec").load_split("test", tmp_path)
    assert (trec.fields, trec.label) == ({"question": "What is AI ?"}, 2)  # hub ABBR=0 -> LM-BFF ABBR=2


def test_hub_failure_is_one_line_data_error(tmp_path: Path, fake_hub: list[tuple]) -> None:
    with pytest.raises(DataError) as err:
        build_task("wic").load_split("test", tmp_path)
    assert fake_hub == [("aps/super_glue", "wic", "validation")]
    msg = str(err.value)
    assert "\n" not in msg and "Hub aps/super_glue/wic: failed (ConnectionError: Couldn't reach" in msg
    assert str(tmp_path / "WiC/val.jsonl") in msg
