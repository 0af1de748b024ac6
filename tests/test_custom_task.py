"""task=custom: a labelled file the project has never seen, described by config alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data import DataError, Request, build_task, load_task_data
from tests.conftest import TINY, cli, compose, run_inprocess

SST2_AS_CUSTOM = """\
defaults:
  - custom
  - _self_
files:
  train: SST-2/train.tsv
  test: SST-2/dev.tsv
label_words: {"0": " terrible", "1": " great"}
template:
  causal: "{sentence} It was"
  mlm: "{sentence} It was{mask}."
"""


def compose_task(folder: Path, name: str, extra: list[str] = ()) -> dict:
    from omegaconf import OmegaConf

    overrides = [f"task={name}", f"hydra.searchpath=[file://{folder}]", *extra]
    return OmegaConf.to_container(compose(overrides).task, resolve=True)


def test_sst2_as_a_custom_yaml_gives_identical_prompts_and_labels(tmp_path: Path, needs_shared: Path) -> None:
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "sst2_mine.yaml").write_text(SST2_AS_CUSTOM)
    options = compose_task(tmp_path, "sst2_mine")
    mine, builtin = build_task("custom", options), build_task("sst2")
    req = Request("fixed", 42, 16, 64, 16, 64, 1000)
    ours, theirs = load_task_data(mine, needs_shared, req), load_task_data(builtin, needs_shared, req)
    for split in ("train", "dev", "test"):
        a, b = getattr(ours, split), getattr(theirs, split)
        assert len(a) == len(b) > 0
        assert [mine.causal_prompt(e) for e in a] == [builtin.causal_prompt(e) for e in b]
        assert [mine.mlm_prompt(e) for e in a] == [builtin.mlm_prompt(e) for e in b]
        assert [e.label for e in a] == [e.label for e in b]
    assert mine.label_words == builtin.label_words


WILD_CSV = '\ufefflabel,review\n-1,"Dull, and long"\n\n1,"Loved it.\nWould watch again"\n1,fine\n-1,  meh  \n'


def custom(path: Path, **extra) -> object:
    words = {"-1": " bad", "1": " good"}
    return build_task("custom", {"files": {"train": str(path)}, "label_words": words,
                                 "template": {"causal": "{review} =>"}, **extra})  # fmt: skip


def test_files_from_the_wild_bom_quoted_newlines_blank_lines_and_odd_labels(tmp_path: Path) -> None:
    rows = [("Dull, and long", 0), ("Loved it.\nWould watch again", 1), ("fine", 1), ("meh", 0)]
    csv_file = tmp_path / "r.csv"
    csv_file.write_text(WILD_CSV, encoding="utf-8")
    jsonl = tmp_path / "r.jsonl"
    labelled = [("Dull, and long", -1), ("Loved it.\nWould watch again", 1), ("fine", 1), ("meh", "-1")]
    jsonl.write_text("\n".join(json.dumps({"label": v, "review": t}) for t, v in labelled) + "\n\n")
    as_list = tmp_path / "r.json"
    as_list.write_text(json.dumps([json.loads(line) for line in jsonl.read_text().split("\n") if line]))
    tsv = tmp_path / "r.tsv"
    tsv.write_text('-1\tDull, and long\n1\tLoved it. "quote\n\n1\tfine\n-1\tmeh\n')
    for path in (csv_file, jsonl, as_list):
        got = custom(path).read(path)
        assert [(e.fields["review"], e.label) for e in got] == rows
    got = custom(tsv, columns=["label", "review"]).read(tsv)  # headerless, tabs only: the lone quote is text
    assert [e.fields["review"] for e in got] == ["Dull, and long", 'Loved it. "quote', "fine", "meh"]


def test_without_a_test_file_test_rows_are_held_out_of_train_seeded(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    path.write_text("label,review\n" + "".join(f"{1 if i % 2 else -1},review {i}\n" for i in range(40)))
    task = custom(path, num_test=10)
    data = load_task_data(task, None, Request("fixed", 7, 4, 20, 6, 10, 1000))
    text = {s: [e.fields["review"] for e in getattr(data, s)] for s in ("train", "dev", "test")}
    assert [len(v) for v in text.values()] == [20, 6, 10]
    assert not (set(text["test"]) & (set(text["train"]) | set(text["dev"])))
    again = load_task_data(custom(path, num_test=10), None, Request("fixed", 7, 4, 20, 6, 10, 1000))
    assert [e.fields["review"] for e in again.test] == text["test"]


@pytest.mark.parametrize(
    ("content", "extra", "needle"),
    [
        (
            "label,text\n1,a\n",
            {},
            r"r\.csv: no column 'review' \(its columns: label, text\); fix the template's",
        ),
        (
            "label,review\n1,a\n0,b\n",
            {},
            r"r\.csv line 3: label '0' is not a key of task\.label_words \(-1, 1\)",
        ),
        (
            'label,review\n1,"two\nlines"\n-1,x,y\n',
            {},
            r"r\.csv line 4: 3 fields, but the header row names 2",
        ),
        (
            b"label,review\n1,caf\xc3\xa9\n-1,na\xefve\n",
            {},
            r"r\.csv is not valid utf-8 \(byte 0xef at offset 26, line 3\).*task\.encoding",
        ),
        ("1,a\n", {"label_field": "stars"}, r"no column 'stars'.*fix task\.label_field"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line_naming_file_line_and_fix(
    tmp_path: Path, content: str | bytes, extra: dict, needle: str
) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=needle) as err:
        custom(path, **extra).read(path)
    assert "\n" not in str(err.value)


def test_a_never_seen_csv_finetunes_with_mezo_and_conmezo_by_config_alone(tmp_path: Path) -> None:
    """The issue's done-when: a user YAML in their own folder, two optimizers, accuracy before/after;
    label_words on the command line as conf/task/custom.yaml shows it, JSON's quoted keys and -1 too
    (issue #30); the task is called by its YAML file's name."""
    reviews = tmp_path / "reviews.csv"
    lines = [
        f'{"1" if i % 3 else "-1"},"{"great fun" if i % 3 else "dull, slow"} number {i}"\n' for i in range(60)
    ]
    reviews.write_text("label,review\n" + "".join(lines))
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "reviews.yaml").write_text(
        "defaults:\n  - custom\n  - _self_\n"
        f"files:\n  train: {reviews}\n"
        'template:\n  causal: "Review: {review}\\nSentiment:"\n'
    )
    tiny = [a for a in TINY if not a.startswith("task")] + [
        "task.num_train=24",
        "task.num_dev=8",
        "task.num_test=16",
    ]
    sweep = tmp_path / "sweep"
    args = [*tiny, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "task=reviews", "train.steps=3",
            'task.label_words={"-1": " bad", "1": " good"}', f"hydra.sweep.dir={sweep}", "-m",
            "optimizer=mezo,conmezo"]  # fmt: skip
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert sorted(s["config"]["optimizer"]["name"] for s in summaries) == ["conmezo", "mezo"]
    for s in summaries:
        assert s["status"] == "finished" and s["data"]["obtained"] == {"train": 24, "dev": 8, "test": 16}
        assert s["config"]["task"]["name"] == s["data"]["task"] == "reviews"
        assert s["config"]["task"]["label_words"] == {"-1": " bad", "1": " good"}
        assert 0 <= s["initial"]["accuracy"] <= 1 and 0 <= s["final"]["accuracy"] <= 1


def test_an_unusable_file_stops_before_the_model_loads(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("label,review\n1,fine\n5,what\n")
    never = ["model.source=hub", "model.name_or_path=/nonexistent/never/loaded"]  # a load would fail
    args = [*TINY, "task=custom", f"task.files.train={bad}", "task.label_words={-1: ' bad', 1: ' good'}",
            "task.template.causal='{review} =>'", *never]  # fmt: skip
    proc = cli(args, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad} line 3: label '5' is not a key")


@pytest.mark.parametrize(
    ("typed", "values"),
    [
        ('{"0": " bad", "1": " good"}', ["0", "1"]),
        ('{"-1": " bad", "1": " good"}', ["-1", "1"]),
        ("{'positive': ' good', 'negative': ' bad'}", ["positive", "negative"]),
        ('{0: " bad", -1: " good"}', ["0", "-1"]),
        ('{positive: " good", "01": " zero"}', ["positive", "01"]),
    ],
)
def test_label_words_as_typed_on_the_command_line(tmp_path: Path, typed: str, values: list[str]) -> None:
    """Hydra's grammar refuses quoted mapping keys; launch.py unquotes them, and numbers become the
    label values as written again."""
    import launch

    (arg,) = [
        a for a in launch.prepare_argv([f"task.label_words={typed}"]) if a.startswith("task.label_words")
    ]
    cfg = compose(["task=custom", "task.files.train=x.csv", arg])
    task = build_task("custom", values_of(cfg))
    assert task.values == values and task.task_type == "classify"


def values_of(cfg) -> dict:
    from zo.config import validate, values

    validate(cfg)
    return values(cfg, "task")


def test_two_custom_tasks_keep_their_names_in_summaries_and_the_report(tmp_path: Path) -> None:
    """A task's name is its YAML file's unless it sets one; zo.report keeps two apart (issue #30)."""
    from zo.report import collect_runs, runs_table

    folder = tmp_path / "conf" / "task"
    folder.mkdir(parents=True)
    for task, own in (("mr", "name: movies\n"), ("subj", "")):
        path = tmp_path / f"{task}.csv"
        path.write_text("label,review\n" + "".join(f"{i % 2},{task} text {i}\n" for i in range(40)))
        (folder / f"{task}.yaml").write_text(
            f"defaults: [custom, _self_]\n{own}files:\n  train: {path}\n"
            'label_words: {0: " bad", 1: " good"}\ntemplate:\n  causal: "{review} =>"\n'
        )
    base = [a for a in TINY if not a.startswith("task")] + ["task.num_train=8", "task.num_dev=4",
            "task.num_test=8", "train.eval_samples=8", "train.steps=1", "save.model=false"]  # fmt: skip
    for task in ("mr", "subj"):
        summary = run_inprocess(
            [*base, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"task={task}"],
            tmp_path / "sweep" / task,
        )
        assert summary["status"] == "finished"
    rows = runs_table(collect_runs(tmp_path / "sweep"))
    assert sorted(r["task"] for r in rows) == ["movies", "subj"]
