"""Real models through the objectives: tokenizers, candidate scoring, a SmolLM2 run, zero-shot skill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data import TASKS, Request, build_task, load_task_data
from data.base import Example, Task
from tests.conftest import cli
from zo.models import ModelConfig, load_model, load_tokenizer
from zo.objective import CausalLM

SMOL = ModelConfig(
    name="smollm2", kind="causal", source="smollm2_wheel", name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"
)
MINILM = ModelConfig(name="minilm", kind="cls", source="minilm_wheel")


@pytest.fixture(scope="module")
def smollm2():
    return load_model(SMOL, num_labels=2, seed=0)


def classify_tasks() -> list[Task]:
    # task=custom's words are whatever its user's config says
    return [cls() for cls in TASKS.values() if cls.task_type == "classify" and cls.name != "custom"]


def test_causal_label_words_are_single_smollm2_tokens() -> None:
    tok = load_tokenizer(SMOL)
    for task in classify_tasks():
        for word in task.causal_candidates(Example({})):
            assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, (task.name, word)


def test_masked_label_words_are_single_wordpiece_tokens() -> None:
    """The BERT WordPiece vocab (tiny-roberta/tiny-bert tests) holds every verbalizer word whole."""
    tok = load_tokenizer(MINILM)
    for task in classify_tasks():
        if task.name in ("wic", "boolq", "multirc"):  # causal-only tasks: no masked-LM prompt
            continue
        for word in task.label_words:
            assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, (task.name, word)


class Cloze(Task):
    name = "cloze"
    task_type = "multiple_choice"

    def causal_prompt(self, ex: Example) -> str:
        return ex.fields["q"]


def test_candidate_scoring_picks_the_right_multi_token_answer(smollm2) -> None:
    model, tok = smollm2
    batch = [
        Example(
            {"q": "The capital of France is"}, 0, candidates=[" Paris, the city of light", " a purple banana"]
        ),
        Example({"q": "Two plus two equals"}, 1, candidates=[" seven hundred and three", " four"]),
    ]
    objective = CausalLM(Cloze(), tok, 64)
    probs = objective.scores(model, batch).exp()
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.8
    assert objective.evaluate(model, batch, 2)["accuracy"] == 1.0


def test_single_token_fast_path_equals_sequence_scoring(smollm2) -> None:
    model, tok = smollm2
    task = build_task("bbcnews")
    examples = task.load_split("test", None)[:6]
    objective = CausalLM(task, tok, 96)
    with torch.no_grad():
        fast = objective.scores(model, examples)
        slow = objective._sequence_scores(model, examples)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_classification_training_loss_is_the_candidates_cross_entropy(smollm2) -> None:
    """MeZO's --train_as_classification: the trained loss is what evaluation's eval_loss measures."""
    model, tok = smollm2
    task = build_task("bbcnews")
    examples = task.load_split("test", None)[:4]
    as_cls, as_lm = CausalLM(task, tok, 96, "classification"), CausalLM(task, tok, 96, "lm")
    assert CausalLM(task, tok, 96).train_loss == "classification"  # auto, for a classify task
    with torch.no_grad():
        cls_loss, lm_loss = float(as_cls.loss(model, examples)), float(as_lm.loss(model, examples))
    assert cls_loss == pytest.approx(as_cls.evaluate(model, examples, 4)["eval_loss"], rel=1e-5)
    assert (
        abs(cls_loss - lm_loss) > 1e-2
    )  # the gold word's LM loss over the whole vocabulary is another number


def test_train_loss_defaults_follow_mezo_and_generation_refuses_classification(smollm2) -> None:
    from zo import ZOError
    from zo.objective import build_objective, default_train_loss

    _, tok = smollm2
    assert [default_train_loss(build_task(n)) for n in ("sst2", "rte", "record", "squad")] == [
        "classification",
        "classification",
        "lm",
        "lm",
    ]
    with pytest.raises(ZOError, match="generates answers"):
        build_objective(build_task("squad"), "causal", tok, 64, "classification")


def test_zero_shot_smollm2_beats_chance_on_sst2(smollm2, needs_shared: Path) -> None:
    model, tok = smollm2
    task = build_task("sst2_review")
    data = load_task_data(
        task, needs_shared, Request(sampling="fixed", num_test=100, test_cap=1000, data_seed=42)
    )
    accuracy = CausalLM(task, tok, 128).evaluate(model, data.test, 32)["accuracy"]
    # measured 0.77 on 300 dev sentences; 0.65 is ~3 binomial std (of 100) below, chance is 0.5
    assert accuracy >= 0.65


def test_default_model_runs_a_few_real_steps(tmp_path: Path) -> None:
    out = tmp_path / "smol"
    res = cli(
        [
            "train.steps=2",
            "train.eval_samples=20",
            "train.dev_samples=20",
            "log.wandb=disabled",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["model"]["name"] == "smollm2"
    assert summary["config"]["optimizer"]["name"] == "conmezo" and summary["params"] > 100_000_000
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0 and summary["data"]["task"] == "bbcnews"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["loss"] > 0 for r in rows[1:])
    assert {"dev_accuracy", "dev_eval_loss", "accuracy"} <= set(rows[0])


def test_classification_head_run_on_minilm(tmp_path: Path, needs_shared: Path) -> None:
    out = tmp_path / "minilm"
    args = [
        "model=minilm",
        "task=sst2",
        "optimizer.fused=false",
        "task.sampling=fixed",
        "task.num_train=32",
        "task.num_test=24",
        "task.num_dev=8",
        "train.eval_samples=24",
        "train.dev_samples=8",
        "train.steps=2",
        "train.batch_size=4",
        "log.wandb=disabled",
        f"hydra.run.dir={out}",
    ]
    res = cli(args, tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and 20_000_000 < summary["params"] < 25_000_000
    assert summary["final"]["accuracy"] in {i / 24 for i in range(25)}


def test_generation_task_runs_with_f1_and_em(tmp_path: Path) -> None:
    root = tmp_path / "datasets" / "SQuAD"
    root.mkdir(parents=True)
    qas = [
        {
            "question": f"Who wrote book {i}?",
            "answers": [{"text": f"Author {i}", "answer_start": 0}],
            "id": str(i),
        }
        for i in range(6)
    ]
    squad = {"data": [{"title": "Books", "paragraphs": [{"context": "Author 0 wrote book 0.", "qas": qas}]}]}
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (root / name).write_text(json.dumps(squad))
    out = tmp_path / "gen"
    args = [
        "model=tiny-llama",
        "task=squad",
        f"data.root={root.parent}",
        "task.num_train=6",
        "task.num_test=4",
        "train.eval_samples=4",
        "train.steps=2",
        "train.batch_size=2",
        "log.wandb=disabled",
        f"hydra.run.dir={out}",
    ]
    res = cli(args, tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "f1" and 0.0 <= summary["final"]["f1"] <= 1.0 and "em" in summary["final"]
