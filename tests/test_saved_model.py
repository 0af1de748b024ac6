"""The finetuned model out: a Hugging Face folder at the end of training, loadable by transformers and
by this runner (an evaluation-only run), and never half-written."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import QUAD, ROOT, TINY, compose, run_inprocess
from zo import ZOError

TRAIN = [*TINY, "optimizer=mezo", "train.steps=3"]


def test_saved_model_loads_with_transformers_and_evaluates_to_the_runs_final_score(
    tmp_path: Path, needs_shared: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zo.config import model_config
    from zo.models import load_model

    trained = run_inprocess(TRAIN, tmp_path / "train")
    folder = tmp_path / "train" / "model"
    assert trained["status"] == "finished" and trained["model_dir"] == str(folder)
    assert (folder / "model.safetensors").exists() and not list(tmp_path.glob("train/model.tmp*"))
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert len(AutoTokenizer.from_pretrained(folder)) == loaded.config.vocab_size
    start, _ = load_model(model_config(compose(TRAIN)), 2, seed=0)  # the same fresh init as the run's
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), loaded.parameters(), strict=True)]
    assert all(moved)  # full-parameter ZO: every tensor took the 3 steps

    # Evaluation only: train.steps=0 on the saved folder scores exactly what the run ended with.
    evaluated = run_inprocess([*TRAIN, "train.steps=0", f"model.name_or_path={folder}"], tmp_path / "eval")
    assert evaluated["status"] == "finished" and evaluated["steps"] == 0
    assert evaluated["final"] == trained["final"] and evaluated["initial"] == trained["final"]
    assert evaluated["model_dir"] is None and not (tmp_path / "eval" / "model").exists()
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["final"] == trained["final"]


def test_save_model_false_and_the_quadratic_write_no_folder(tmp_path: Path, needs_shared: Path) -> None:
    off = run_inprocess([*TRAIN, "train.steps=1", "save.model=false"], tmp_path / "off")
    quad = run_inprocess([*QUAD, "train.steps=2"], tmp_path / "quad")
    assert off["model_dir"] is None and quad["model_dir"] is None
    assert not (tmp_path / "off" / "model").exists() and not (tmp_path / "quad" / "model").exists()


def test_full_disk_while_saving_fails_in_one_line_and_leaves_no_partial_folder(
    tmp_path: Path, needs_shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def full(self, folder, **kwargs) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "run"
    with pytest.raises(
        ZOError, match=r"could not write the finetuned model to .*No space left.*save\.model=false"
    ):
        run_inprocess([*TRAIN, "train.steps=1"], out)
    assert not [p.name for p in out.iterdir() if p.name.startswith("model")]  # no model, no model.tmp*
    assert (out / "metrics.jsonl").exists() and (out / "trajectory.bin").stat().st_size == 21  # kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "sweeps").glob("[!_]*.yaml")))
def test_sweep_presets_do_not_save_a_model_per_job(preset: str) -> None:
    from tests.test_sweeps import compose as compose_sweep

    assert compose_sweep([f"+sweeps={preset}"]).save.model is False
