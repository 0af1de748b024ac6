"""The named sweeps reproduce the ConMeZO paper's grids and settings, and every grid point is valid."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from zo.config import ConfigError, validate


def axis(values: str) -> list[str]:
    return values.split()


ROBERTA = dict(model="roberta-large", lr=1e-6, eps=1e-3, theta=1.35, beta=0.99, steps=10000, batch=64)
OPT = dict(model="opt-1.3b", lr=1e-7, eps=1e-3, theta=1.4, beta=0.99, steps=20000, batch=16)
KEYS = dict(model="model.name", task="task.name", optimizer="optimizer.name", lr="optimizer.lr",
            eps="optimizer.eps", theta="optimizer.theta", beta="optimizer.beta", steps="train.steps",
            batch="train.batch_size", schedule="schedule.kind")  # fmt: skip
# name: (grid as in hydra.sweeper.params, settings every job shares)
SWEEPS = {
    "synthetic": (
        {
            "optimizer.lr": axis("1 1e-1 1e-2 1e-3 1e-4"),
            "optimizer.beta": axis("0.8 0.9 0.95 0.99"),
            "optimizer.theta": axis("1.2 1.3 1.4 1.5"),
            "train.seed": axis("0 1 2"),
        },
        dict(model="quadratic", task="quadratic", schedule="constant", eps=0.01),
    ),
    "trec_heatmap": (
        {"optimizer.theta": axis("1.2 1.3 1.35 1.4 1.5"), "optimizer.beta": axis("0.8 0.9 0.95 0.99")},
        {**ROBERTA, "task": "trec", "optimizer": "conmezo"},
    ),
    "roberta_table": (
        {
            "task": axis("sst2 sst5 snli mnli rte trec"),
            "optimizer": axis("mezo conmezo"),
            "train.seed": axis("13 21 42 87 100"),
        },
        ROBERTA,
    ),
    "opt_table": (
        {"task": axis("sst2 rte wic boolq multirc record squad drop"), "optimizer": axis("mezo conmezo")},
        OPT,
    ),
    "convergence_grid": (
        {
            "task": axis("sst2_review bbcnews"),
            "optimizer": axis("mezo mezo_momentum conmezo"),
            "optimizer.lr": axis("1e-5 3e-5 1e-4"),
        },
        dict(model="smollm2", steps=300, batch=8, schedule="warmup"),
    ),
    "convergence": (
        {
            "task": axis("sst2_review bbcnews"),
            "optimizer": axis("mezo conmezo mezo_momentum"),
            "train.seed": axis("0 1 2"),
        },
        dict(model="smollm2", steps=1000, batch=8, eps=1e-3, lr=3e-5, schedule="warmup"),
    ),
    "leaders": (
        {
            "lr_point": axis("mid high low"),
            "optimizer": axis("fzoo sparse_mezo r_adazo conmezo"),
            "task": axis("bbcnews"),
        },
        dict(model="smollm2", batch=8, eps=1e-3, schedule="warmup"),
    ),
    "lora_grid": (
        {
            "lr_point": axis("mid high top top2 low"),
            "optimizer": axis("mezo conmezo"),
            "task": axis("bbcnews"),
        },
        dict(model="smollm2", steps=300, batch=8, eps=1e-3, schedule="warmup"),
    ),
    "lora": (
        {"task": axis("bbcnews"), "train.seed": axis("0 1 2"), "optimizer": axis("mezo conmezo")},
        dict(model="smollm2", steps=1000, batch=8, eps=1e-3, schedule="warmup"),
    ),
}


def compose(overrides: list[str]):
    """Compose as launch.py does: the repo root on the search path, so `+sweeps=NAME` resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        search = f"hydra.searchpath=[file://{ROOT}]"
        return hydra_compose(config_name="config", overrides=[*overrides, search], return_hydra_config=True)


def pick(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# committed under results/ (results/README.md)
STUDIES = ("convergence", "convergence_grid", "leaders", "lora_grid", "lora")


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_grid_settings_and_stable_folders(name: str) -> None:
    grid, settings = SWEEPS[name]
    hydra = compose([f"+sweeps={name}"]).hydra
    assert {k: str(v).split(",") for k, v in hydra.sweeper.params.items()} == grid
    home = "results" if name in STUDIES else "outputs/sweeps"  # a committed study's runs, or scratch
    assert hydra.sweep.dir == f"{home}/{name}"
    assert hydra.sweep.subdir == hydra.job.override_dirname  # a re-run lands in the same job folders
    last_point = [f"{k}={v[-1]}" for k, v in grid.items()]
    cfg = compose([f"+sweeps={name}", *last_point])
    validate(cfg)
    assert cfg.resume is True
    for key, value in settings.items():
        if KEYS[key] in grid:  # a grid axis: the point's own value
            continue
        assert pick(cfg, KEYS[key]) == (pytest.approx(value) if isinstance(value, float) else value), key


def test_convergence_study_trains_as_classification_and_scores_dev_and_test() -> None:
    cfg = compose(["+sweeps=convergence", "task=bbcnews", "optimizer=meazo"])
    assert (cfg.task.train_loss, cfg.task.num_dev, cfg.train.dev_samples, cfg.train.eval_samples) == (
        "classification",
        300,
        300,
        300,
    )
    assert (cfg.train.eval_every, cfg.log.align_every, cfg.ckpt.every) == (100, 100, 100)
    assert cfg.optimizer.lr == cfg.lr_by_optimizer.meazo  # no grid for it yet: η follows the optimizer
    for task in ("sst2_review", "bbcnews"):  # and the grid's, per task, from conf/tuned
        tuned = compose(["+sweeps=convergence", f"task={task}", "optimizer=conmezo"])
        assert tuned.optimizer.lr == tuned.tuned_lr == 3e-5


def test_the_tuned_lr_of_a_model_and_task_is_the_default_where_it_was_measured() -> None:
    """conf/tuned/<model>/<task>/<optimizer>.yaml holds what a grid measured; every run reads it (the
    default `python launch.py` too), a command-line η wins, and elsewhere the optimizer's own holds."""
    assert compose([]).optimizer.lr == 3e-5  # SmolLM2 × bbcnews × ConMeZO: convergence_grid's η
    assert compose(["optimizer=mezo"]).optimizer.lr == 3e-5
    assert compose(["optimizer.lr=1e-4"]).optimizer.lr == 1e-4
    validate(compose(["optimizer.lr=1e-4"]))  # tuned_lr, then unread, is still a known key
    assert compose(["optimizer=loren"]).optimizer.lr == compose(["optimizer=loren", "task=trec"]).optimizer.lr
    assert compose(["task=trec"]).optimizer.lr == 1e-6  # not measured: conf/optimizer/conmezo.yaml's
    tuned = sorted(
        p.relative_to(ROOT / "conf" / "tuned").as_posix() for p in (ROOT / "conf" / "tuned").rglob("*.yaml")
    )
    assert tuned == [
        f"smollm2/{t}/{o}.yaml"
        for t in ("bbcnews", "sst2_review")
        for o in ("conmezo", "mezo", "mezo_momentum")
    ]


def test_roberta_seed_picks_the_kshot_sample_too() -> None:
    cfg = compose(["+sweeps=roberta_table", "train.seed=87", "task=rte"])
    assert (cfg.task.name, cfg.task.data_seed, cfg.train.seed) == ("rte", 87, 87)


def test_slurm_gpu_preset_extends_submitit_slurm() -> None:
    launcher = compose(
        ["+sweeps=trec_heatmap", "hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100"]
    ).hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("a100", 1, 1)
    assert launcher.timeout_min > 0 and launcher.mem_gb > 0 and launcher.cpus_per_task > 0
    assert launcher.array_parallelism > 0 and launcher.submitit_folder.startswith(
        "outputs/sweeps/trec_heatmap/"
    )


def test_readme_lists_every_sweep_with_its_command() -> None:
    readme = (ROOT / "sweeps" / "README.md").read_text()
    for name in SWEEPS:
        assert f"+sweeps={name}" in readme
    results = (ROOT / "results" / "README.md").read_text()
    for name in STUDIES:  # each committed study: what it holds and the command that remakes it
        assert f"+sweeps={name}" in results and f"results/{name}" in results
    # And every folder there has its row (a study's set-aside runs too).
    for folder in (ROOT / "results").iterdir():
        assert not folder.is_dir() or f"| `results/{folder.name}/` |" in results


COMPARED = ("mezo", "conmezo", "meazo", "zo_adam", "loren", "hizoo", "lozo")


def test_a_sweep_over_every_zo_method_runs_and_reports_one_row_each(tmp_path) -> None:
    """`+sweeps=convergence -m optimizer=...` through launch.py, shrunk to a tiny model, then the report:
    each method takes its own η from lr_by_optimizer and gives one finished row."""
    from tests.conftest import TINY, cli
    from zo.report import collect_runs, runs_table

    sweep = tmp_path / "sweep"
    own = [
        "train.steps=2", "train.eval_every=2", "train.dev_samples=8", "train.eval_samples=8",
        "task.num_test=8", "task.num_train=16", "log.align_every=0", "ckpt.every=0",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${optimizer.name}",  # every override in the name would pass 255 characters
    ]  # fmt: skip
    mine = {a.split("=")[0] for a in own} | {"optimizer.lr"}  # η comes from lr_by_optimizer
    shrink = [a for a in TINY if a.split("=")[0] not in mine] + own
    proc = cli(
        ["+sweeps=convergence", "-m", f"optimizer={','.join(COMPARED)}", "train.seed=0", *shrink], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = compose(["+sweeps=convergence"])
    rows = runs_table(collect_runs(sweep), steps=(2,), target=None)
    assert sorted(r["optimizer"] for r in rows) == sorted(COMPARED)
    assert {r["status"] for r in rows} == {"finished"} and {r["task"] for r in rows} == {"sst2"}
    for r in rows:
        assert (
            r["lr"] == pytest.approx(cfg.lr_by_optimizer[r["optimizer"]])
            and r["test_at_best_dev"] is not None
        )


# Four optuna trials on the quadratic, eager (the subject is the search, not the kernels).
TUNE = ["+sweeps=tune", "-m", "model=quadratic", "task=quadratic", "optimizer.fused=false",
        "hydra.sweeper.direction=minimize", "hydra.sweeper.n_trials=4", "log.wandb=disabled"]  # fmt: skip


def test_optuna_tune_preset_searches_lr_and_eps_and_reports_the_best_trial(tmp_path) -> None:
    """+sweeps=tune on the quadratic: each trial returns its final f, the study keeps the smallest."""
    import yaml

    from tests.conftest import cli

    sweep = tmp_path / "tune"
    args = [*TUNE, "train.steps=60", f"hydra.sweep.dir={sweep}"]
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in range(4)]
    finals = [t["final"]["loss"] for t in trials]
    assert best["best_value"] == pytest.approx(min(finals))
    chosen = trials[finals.index(min(finals))]["config"]["optimizer"]
    assert best["best_params"] == pytest.approx(
        {"optimizer.lr": chosen["lr"], "optimizer.eps": chosen["eps"]}
    )
    lrs = [t["config"]["optimizer"]["lr"] for t in trials]
    assert len(set(lrs)) == 4 and all(1e-7 <= lr <= 1e-3 for lr in lrs)  # sampled, on the preset's range


def test_a_diverged_optuna_trial_is_an_answer_and_the_search_exits_0(tmp_path) -> None:
    """+sweeps=tune choosing η from 1e-4 (converges) and 100 (diverges on the quadratic): the diverged
    trials' folders say so, the study picks 1e-4, and the exit code is 0 (a plain sweep's would be 1)."""
    import yaml

    from tests.conftest import cli

    sweep = tmp_path / "tune"
    args = [
        *TUNE,
        "optimizer.lr=choice(1e-4,100.0)",
        "optimizer.eps=0.01",
        "train.steps=20",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in range(4)]
    by_lr = {lr: [t for t in trials if t["config"]["optimizer"]["lr"] == lr] for lr in (1e-4, 100.0)}
    assert by_lr[1e-4] and by_lr[100.0]  # the sampler (seed 0) tried both
    assert all(t["status"] == "diverged" and "diverged at step" in t["error"] for t in by_lr[100.0])
    assert all(t["status"] == "finished" for t in by_lr[1e-4])
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == pytest.approx(1e-4)
    assert "the search scores it as failed" in proc.stderr and "job(s) of the sweep failed" not in proc.stderr
    # A grid sweep has no search to answer: there the diverged job is a failed one.
    plain = [
        "-m",
        "model=quadratic",
        "task=quadratic",
        "optimizer.fused=false",
        "optimizer.lr=1e-4,100.0",
        "optimizer.eps=0.01",
        "train.steps=20",
        "log.wandb=disabled",
        f"hydra.sweep.dir={tmp_path / 'grid'}",
    ]
    proc = cli(plain, tmp_path)
    assert proc.returncode == 1 and "1 job(s) of the sweep failed" in proc.stderr


def test_lora_study_adapts_with_lora_at_each_methods_chosen_point_of_the_grid() -> None:
    """The grid sweeps lr_point; the study reads each method's chosen point (lr_chosen) of the same grid."""
    points = ("low", "mid", "high", "top", "top2")
    grid = {point: compose(["+sweeps=lora_grid", f"lr_point={point}"]) for point in points}
    assert [cfg.optimizer.lr for cfg in grid.values()] == [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    for name, point in (("mezo", "high"), ("conmezo", "top2")):
        cfg = compose(["+sweeps=lora", f"optimizer={name}", "task=bbcnews", f"lr_chosen.{name}={point}"])
        validate(cfg)
        assert (cfg.model.trainable, cfg.model.lora.r, cfg.optimizer.lr) == (
            "lora",
            8,
            grid[point].optimizer.lr,
        )
        assert (cfg.task.train_loss, cfg.log.align_every, cfg.ckpt.mode) == ("classification", 100, "log")
    # The grid's choice; ConMeZO's one point lower: its 1e-3 diverged in 1000 steps (docs/results.md §5).
    for name, lr in (("mezo", 1e-3), ("conmezo", 3e-4)):
        assert compose(["+sweeps=lora", f"optimizer={name}", "task=bbcnews"]).optimizer.lr == lr


def test_leaders_compares_the_methods_at_one_budget_of_forwards() -> None:
    """Every method gets 1200 forwards (MeZO's target run 600), evaluated every ~200 forwards."""
    forwards = {"mezo": 2, "conmezo": 2, "sparse_mezo": 2, "r_adazo": 3, "fzoo": 9}
    for name, per_step in forwards.items():
        cfg = compose(["+sweeps=leaders", f"optimizer={name}", "task=bbcnews", "lr_point=low"])
        validate(cfg)
        budget = cfg.train.steps * per_step
        assert budget == 600 if name == "mezo" else 1200 <= budget < 1200 + per_step, name
        assert 180 <= cfg.train.eval_every * per_step <= 200, name
    assert compose(["+sweeps=leaders", "optimizer=mezo", "task=bbcnews"]).optimizer.lr == 3e-5
    # FZOO's grid is centred on MeZO's per-coordinate step; the reference's η stays as its own point
    fzoo = ["+sweeps=leaders", "optimizer=fzoo"]
    assert [compose([*fzoo, f"lr_point={p}"]).optimizer.lr for p in ("ref", "mid")] == [1e-5, 1e-3]


def test_a_sweeps_tables_may_go_unread_but_a_typo_may_not() -> None:
    """Overriding the key that reads a sweep's table (train.steps and optimizer.lr on the leaders
    sweep: steps_by_optimizer and lr_grid) leaves the table unread, and the run goes. A top-level key
    the command line adds, or a file's near miss of a real key, must still be read."""
    leaders = ["+sweeps=leaders", "optimizer=fzoo", "train.steps=2", "optimizer.lr=1e-4"]
    validate(compose(leaders), leaders)
    with pytest.raises(ConfigError, match="^stepz is not a key of the config"):
        validate(compose([*leaders, "+stepz={a: 1}"]), [*leaders, "+stepz={a: 1}"])
    with pytest.raises(ConfigError, match="^trian is not a key of the config"):
        validate(compose([*leaders, "+trian={steps: 3}"]), leaders)  # as if a file had put it there


def test_every_result_file_the_docs_cite_is_in_the_repository() -> None:
    """bench/results/ is git-ignored (a benchmark run must not land by accident), so a figure the docs
    quote can be left behind when its commit forgets `git add -f`: a fresh clone then lacks it."""
    import re

    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]
    cited = {
        m for doc in docs for m in re.findall(r"bench/results/[\w.-]+\.(?:json|csv|png|svg)", doc.read_text())
    }
    assert len(cited) >= 10 and not [c for c in sorted(cited) if not (ROOT / c).is_file()]
