"""task=custom as generation (issue #30): a question/answer CSV, TRL's prompt–completion and messages
files, each by config alone; every bad input as one line before the model loads; the saved model
answers as the run evaluated it. Runs are in-process on tiny-llama, a few steps each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zo.runner
from data import DataError, build_task
from tests.conftest import TINY, compose, minutes, read_metrics, run_inprocess
from zo import ZOError
from zo.config import ConfigError, validate
from zo.optim import names

# Untied embeddings: a random tiny llama with tied ones repeats the prompt's last token ([SEP]), which
# decodes to "" and would make comparing answers vacuous.
GEN = [a for a in TINY if not a.startswith(("task", "train.eval_samples"))] + [
    "task=custom", "task.num_train=16", "task.num_dev=4", "task.num_test=6", "train.eval_samples=6",
    "task.max_length=48", "task.max_new_tokens=4", "model.arch.tie_word_embeddings=false",
    "train.steps=2", "save.model=false",
]  # fmt: skip
SMOL_TOKENIZER = ["model.tokenizer=smollm2"]  # has a chat template (minilm's has none)


def qa_csv(folder: Path, rows: int = 30) -> Path:
    """Header-less: question, answer."""
    path = folder / "qa.csv"
    path.write_text("".join(f'"What is {i} plus one, then?",{i + 1}\n' for i in range(rows)))
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def prompt_completion(folder: Path, rows: int = 30) -> Path:
    return write_jsonl(
        folder / "pc.jsonl", [{"prompt": f"Count: {i},", "completion": f" {i + 1}"} for i in range(rows)]
    )


def messages(folder: Path, rows: int = 30) -> Path:
    chats = [
        chat(("system", "Count."), ("user", f"After {i}?"), ("assistant", str(i + 1))) for i in range(rows)
    ]
    return write_jsonl(folder / "chat.jsonl", chats)


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


CSV_KEYS = [
    "task.columns=[question,answer]",
    "task.answer_field=answer",
    "task.template.causal='Q: {question}\nA:'",
]


def task_of(path: Path, **extra) -> object:
    return build_task("custom", {"files": {"train": str(path)}, **extra})


# ---- reading the three formats ---------------------------------------------------------------------
def test_three_formats_become_generation_examples_by_config_alone(tmp_path: Path) -> None:
    csv_task = task_of(qa_csv(tmp_path), columns=["question", "answer"], answer_field="answer",
                       template={"causal": "Q: {question}\nA:"})  # fmt: skip
    ex = csv_task.read(qa_csv(tmp_path))[3]
    assert csv_task.task_type == "generate" and csv_task.label_words == []
    assert (csv_task.causal_prompt(ex), ex.answers, ex.meta) == (
        "Q: What is 3 plus one, then?\nA:",
        ["4"],
        {"line": 4},
    )

    pc_task = task_of(prompt_completion(tmp_path))
    ex = pc_task.read(tmp_path / "pc.jsonl")[0]
    assert (pc_task.causal_prompt(ex), ex.answers, ex.meta["target"]) == ("Count: 0,", ["1"], " 1")
    assert not pc_task.chat

    chat_task = task_of(messages(tmp_path))
    ex = chat_task.read(tmp_path / "chat.jsonl")[5]
    assert ex.meta["messages"] == [
        {"role": "system", "content": "Count."},
        {"role": "user", "content": "After 5?"},
    ]
    assert ex.answers == ["6"] and chat_task.chat

    wrapped = task_of(qa_csv(tmp_path), columns=["question", "answer"], answer_field="answer",
                      template={"causal": "{question}", "chat": True})  # fmt: skip
    ex = wrapped.read(tmp_path / "qa.csv")[0]
    assert ex.meta["messages"] == [{"role": "user", "content": "What is 0 plus one, then?"}]


def test_empty_answers_are_dropped_with_a_count(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nq1,a1\nq2,\nq3,  \nq4,a4\n")
    got = task_of(path, answer_field="answer", template={"causal": "{question}"}).read(path)
    assert [e.answers for e in got] == [["a1"], ["a4"]]
    err = capsys.readouterr().err.strip()
    assert err == f"warning: {path}: 2 of 4 rows have an empty answer and are dropped (lines 3, 4)"


@pytest.mark.parametrize(
    ("name", "content", "extra", "needle"),
    [
        ("r.csv", "question,reply\nq,a\n", {"answer_field": "answer"},
         r"r\.csv: no column 'answer' \(its columns: question, reply\); fix task\.answer_field"),
        ("r.csv", "question,answer\nq,\n", {"answer_field": "answer"}, r"r\.csv: every row's answer is"),
        ("r.csv", "question,answer\nq,a\n", {},
         r"needs task\.label_words \(classification\) or task\.answer_field \(generation\)"),
        ("r.jsonl", [chat(("user", "hi"), ("assistant", "yo")), chat(("user", "hi"))], {},
         r"r\.jsonl line 2: the conversation has no assistant turn"),
        ("r.jsonl", [chat(("human", "hi"), ("assistant", "yo"))], {},
         r"r\.jsonl line 1: unknown role 'human' \(allowed: system, user, assistant, tool\)"),
        ("r.jsonl", [chat(("user", "hi"), ("assistant", "yo"), ("user", "bye"))], {},
         r"line 1: turns follow the last assistant turn"),
        ("r.jsonl", [{"prompt": "a", "completion": "b"}, chat(("user", "hi"), ("assistant", "yo"))], {},
         r"r\.jsonl line 2: no 'prompt' and 'completion' \(the file is in TRL's prompt-completion format"),
        ("r.jsonl", [{"messages": "hi"}], {}, r"line 1: messages must be a list of"),
    ],
)  # fmt: skip
def test_bad_generation_input_is_one_line(
    tmp_path: Path, name: str, content, extra: dict, needle: str
) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        write_jsonl(path, content)
    with pytest.raises(DataError, match=needle) as err:
        task_of(path, template={"causal": "{question}"}, **extra).read(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["task.select_on=accuracy"], "select_on=accuracy is invalid: allowed auto, f1, em, eval_loss (a g"),
        (["task.answer_field=null", "task.label_words={0: ' no'}", "task.select_on=f1"],
         "task.select_on=f1 is invalid: allowed auto, accuracy, eval_loss (a classification"),
        (["task.label_words={0: ' no'}"], "task.answer_field=answer is invalid: allowed null with task"),
        (["task.name=sst2"], "task.name=sst2 is invalid: allowed a name of your own"),
        (["task.max_new_tokens=0"], "task.max_new_tokens=0 is invalid"),
        (["task.answer_field=null", "task.label_words={0: ' no'}", "task.template.chat=true"],
         "task.template={'causal'"),
    ],
)  # fmt: skip
def test_bad_generation_keys_are_refused_before_anything_loads(overrides: list[str], needle: str) -> None:
    cfg = compose([*GEN, "task.files.train=x.csv", "task.answer_field=answer", *overrides])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_missing_chat_template_fails_and_long_prompts_warn_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(zo.runner, "build_run", no_model)
    with pytest.raises(
        ZOError, match=r"asks for a chat template .* this model's tokenizer has none: use"
    ) as err:
        run_inprocess([*GEN, f"task.files.train={messages(tmp_path)}"], tmp_path / "chat")
    assert "\n" not in str(err.value)
    with pytest.raises(AssertionError, match="the model loaded"):
        run_inprocess(
            [*GEN, f"task.files.train={qa_csv(tmp_path)}", *CSV_KEYS, "task.max_length=8"], tmp_path / "long"
        )
    assert (
        "warning: 26 of 26 custom examples are longer than task.max_length=8 tokens"
        in capsys.readouterr().err
    )


# ---- training and evaluating ------------------------------------------------------------------------
FORMATS = {
    "csv": (qa_csv, ["optimizer=mezo", *CSV_KEYS, "save.model=true"]),
    "prompt-completion": (prompt_completion, ["optimizer=conmezo"]),
    "messages": (messages, ["optimizer=adamw", *SMOL_TOKENIZER]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for name, (write, extra) in FORMATS.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = folder, run_inprocess([*GEN, f"task.files.train={write(folder)}", *extra], folder / "run")
    return out


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_trains_on_answer_tokens_and_evaluates_by_decoding(runs, name: str) -> None:
    folder, summary = runs[name]
    rows = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "finished" and summary["metric"] == "f1" and summary["selected_on"] == "dev"
    assert summary["data"]["obtained"] == {"train": 16, "dev": 4, "test": 6}
    assert set(summary["final"]) == {"f1", "em", "eval_loss", "dev_f1", "dev_em", "dev_eval_loss"}
    assert rows[1]["loss"] > 0 and rows[-1]["eval_loss"] != rows[0]["eval_loss"]  # the weights moved
    answers = [json.loads(line) for line in (folder / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and summary["predictions"] == str(folder / "run" / "predictions.jsonl")
    assert sum(a["em"] for a in answers) / 6 == pytest.approx(summary["final"]["em"])
    assert sum(a["eval_loss"] for a in answers) / 6 == pytest.approx(summary["final"]["eval_loss"])
    if name == "messages":  # the chat template's prompt, its generation prompt last
        assert (
            answers[0]["prompt"].endswith("<|im_start|>assistant\n")
            and answers[0]["messages"][0]["role"] == "system"
        )


def test_the_saved_model_answers_as_evaluated(runs) -> None:
    """RUN/model through transformers' own text-generation pipeline gives the run's final answers."""
    from transformers import pipeline

    from zo.generation import answer_of

    folder, _ = runs["csv"]
    generate = pipeline("text-generation", model=str(folder / "run" / "model"))
    answers = [json.loads(line) for line in (folder / "run" / "predictions.jsonl").read_text().splitlines()]
    assert any(a["output"].strip() for a in answers)  # not vacuous: the tiny model writes something
    for a in answers[:3]:
        text = generate(a["prompt"], max_new_tokens=4, do_sample=False, return_full_text=False)[0][
            "generated_text"
        ]
        assert (text, answer_of(text)) == (a["output"], a["prediction"])


def test_lora_selecting_on_eval_loss_and_an_evaluation_only_run(tmp_path: Path) -> None:
    data = f"task.files.train={prompt_completion(tmp_path)}"
    lora = run_inprocess([*GEN, data, "optimizer=mezo", "model.trainable=lora", "task.select_on=eval_loss",
                          "train.eval_every=1"], tmp_path / "lora")  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()]
    best = min(rows, key=lambda r: r["dev_eval_loss"])
    assert (lora["status"], lora["metric"], lora["selected_on"]) == ("finished", "eval_loss", "dev")
    assert lora["best"]["step"] == best["step"] and lora["test_at_best_dev"] == best["eval_loss"]
    only = run_inprocess([*GEN, data, "train.steps=0"], tmp_path / "eval")
    assert only["status"] == "finished" and only["initial"]["f1"] == only["final"]["f1"]
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("name", names())
def test_every_optimizer_trains_a_generation_task(tmp_path: Path, name: str) -> None:
    """Item 5: each optimizer's step on the answer tokens' loss moves the weights (the answer loss on
    test changes), with the forwards its method takes; LOREN at 4 probes to keep it short."""
    data = f"task.files.train={prompt_completion(tmp_path)}"
    few = ["optimizer.queries=4"] if name == "loren" else []
    summary = run_inprocess([*GEN, data, f"optimizer={name}", "train.steps=1", *few], tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert summary["status"] == "finished" and summary["metric"] == "f1", name
    assert summary["final"]["eval_loss"] != summary["initial"]["eval_loss"], name
    assert rows[1]["forwards"] == {"loren": 4, "fzoo": 9, "hizoo": 3, "r_adazo": 3, "adamw": 1, "sgd": 1,
                                   "mezo_svrg": 8}.get(name, 2), name  # fmt: skip


def test_prefix_tuning_trains_a_generation_task(tmp_path: Path) -> None:
    """A prefix adapter's virtual tokens sit before the prompt in training and in decoding."""
    data = f"task.files.train={prompt_completion(tmp_path)}"
    summary = run_inprocess([*GEN, data, "optimizer=conmezo", "model.trainable=prefix"], tmp_path / "run")
    assert summary["status"] == "finished" and summary["params"] < 10_000
    assert summary["final"]["eval_loss"] != summary["initial"]["eval_loss"]
    assert len((tmp_path / "run" / "predictions.jsonl").read_text().splitlines()) == 6


# ---- SmolLM2, for real ---------------------------------------------------------------------------------
@pytest.mark.slow
@minutes
def test_smollm2_instruct_on_a_messages_file_reports_exact_match_before_and_after(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct, MeZO at the tuned η, on conversations whose answers are bare numbers (the
    model answers in a sentence at first): exact match before and after, printed and in summary.json."""
    ask = "What number comes after {}? Reply with the number only."
    chats = [chat(("user", ask.format(i)), ("assistant", str(i + 1))) for i in range(100)]
    summary = run_inprocess(
        ["model=smollm2", "task=custom", f"task.files.train={write_jsonl(tmp_path / 'next.jsonl', chats)}",
         "optimizer=mezo", "optimizer.lr=3e-5", "task.num_train=32", "task.num_dev=8", "task.num_test=16",
         "train.eval_samples=16", "train.steps=20", "train.batch_size=8", "task.max_new_tokens=8",
         "log.wandb=disabled", "save.model=false", "optimizer.fused=false"],
        tmp_path / "run",
    )  # fmt: skip
    before, after = summary["initial"]["em"], summary["final"]["em"]
    print(f"SmolLM2-135M-Instruct exact match: {before:.3f} before, {after:.3f} after 20 MeZO steps")
    assert summary["status"] == "finished" and summary["model_loaded"]
    assert (
        0 <= before <= 1
        and 0 <= after <= 1
        and summary["final"]["eval_loss"] < summary["initial"]["eval_loss"]
    )
