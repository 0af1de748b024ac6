"""LoRA and prefix tuning through peft (model.trainable=lora|prefix): only the adapters enter the flat
buffers and move; the frozen base is never perturbed or written, under every optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, compose, run_inprocess
from zo import ZOError
from zo.optim import build, names


def setup(mode: str, optimizer: str = "mezo"):
    from data import build_task
    from zo.config import model_config
    from zo.models import load_model
    from zo.objective import build_objective
    from zo.runner import load_data

    cfg = compose([*TINY, f"optimizer={optimizer}", f"model.trainable={mode}"])
    task = build_task(cfg.task.name)
    model, tokenizer = load_model(model_config(cfg), task.num_labels, seed=0)
    objective = build_objective(task, "causal", tokenizer, cfg.task.max_length, "classification")
    return cfg, model, objective, load_data(cfg, task).train[:4]


def train(model, objective, batch, cfg, steps: int = 3) -> None:
    from zo.config import optim_config
    from zo.runner import mean_loss

    opt = build(model, optim_config(cfg), seed=0)
    for t in range(1, steps + 1):
        loss_at = lambda probe: mean_loss(objective, model, batch, 4, backward=probe.grad)  # noqa: E731
        opt.step(t, loss_at, 1e-2, 0.9 if opt.uses_beta else None)


@pytest.mark.parametrize("optimizer", names())
@pytest.mark.parametrize("mode", ["lora", "prefix"])
def test_only_the_adapters_move_and_the_base_stays_bitwise(
    mode: str, optimizer: str, needs_shared: Path
) -> None:
    cfg, model, objective, batch = setup(mode, optimizer)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert adapters and all(("lora_" in n) == (mode == "lora") for n in adapters)
    assert sum(p.numel() for p in adapters.values()) < sum(p.numel() for p in frozen.values()) / 10
    train(model, objective, batch, cfg)
    now = dict(model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in frozen.items())
    assert any(not torch.equal(now[n], p) for n, p in adapters.items())


def test_prefix_scores_equal_peft_s_own_forward(needs_shared: Path) -> None:
    """The objective runs the body and the head where a score needs it; with a prefix that must be
    what peft's forward (virtual keys and values, widened mask) gives."""
    from zo.objective import hidden_states

    _, model, objective, batch = setup("prefix")
    enc = objective.tok([objective.task.causal_prompt(ex) for ex in batch], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model.get_output_embeddings()(hidden_states(model, enc.input_ids, enc.attention_mask))
        theirs = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_prefix_decoding_sees_the_prefix(needs_shared: Path) -> None:
    """Generation tasks decode a prefix-tuned model as peft's own forward scores it, token by token, for
    left-padded prompts of different lengths; transformers 5's generate would drop the prefix and answer
    as the base model (the test's control, with the prefix made large so that it changes the answer)."""
    from data import build_task
    from zo.config import model_config
    from zo.generation import Generation
    from zo.models import load_model

    cfg = compose([*TINY, "model.trainable=prefix", "model.arch.tie_word_embeddings=false"])
    model, tokenizer = load_model(model_config(cfg), 0, seed=0)
    objective = Generation(build_task("squad"), tokenizer, 64)
    objective.max_new_tokens = 5
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 5)
    contexts = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]

    def reference(ctx: list[int], generate) -> list[int]:
        ids = torch.tensor([ctx])
        for _ in range(5):
            ids = torch.cat([ids, generate(ids)[:, None]], 1)
        return ids[0, len(ctx) :].tolist()

    with torch.no_grad():
        ours = objective.generate(model, contexts)
        theirs = [reference(c, lambda ids: model(input_ids=ids).logits[:, -1].argmax(-1)) for c in contexts]
        base = [reference(c, lambda ids: model.get_base_model()(input_ids=ids).logits[:, -1].argmax(-1))
                for c in contexts]  # fmt: skip
    assert ours == tokenizer.batch_decode(theirs, skip_special_tokens=True)
    assert theirs != base


def test_a_lora_run_reports_its_trainable_count_and_saves_the_adapter(
    tmp_path: Path, needs_shared: Path
) -> None:
    summary = run_inprocess([*TINY, "model.trainable=lora", "train.steps=2"], tmp_path)
    _, model, _, _ = setup("lora")
    assert summary["params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (tmp_path / "model" / "adapter_config.json").exists()
    assert (tmp_path / "model" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("mode", ["lora", "prefix"])
def test_a_saved_adapter_loads_as_the_model_and_scores_what_its_run_scored(
    tmp_path: Path, needs_shared: Path, mode: str
) -> None:
    """model.name_or_path=<run>/model with an adapter in it: the base the source builds, the adapter on
    it; evaluating it gives the run's final metrics exactly, and training it goes on from there."""
    trained = run_inprocess([*TINY, f"model.trainable={mode}", "train.steps=3", "optimizer.lr=1e-2"],
                            tmp_path / "a")  # fmt: skip
    saved = tmp_path / "a" / "model"
    scored = run_inprocess([*TINY, f"model.name_or_path={saved}", "train.steps=0"], tmp_path / "b")
    assert scored["initial"] == trained["final"] and scored["params"] == trained["params"]
    assert scored["model_loaded"].endswith(f" + adapter {saved.resolve()}")
    more = run_inprocess([*TINY, f"model.name_or_path={saved}", "train.steps=1", "optimizer.lr=1e-2"],
                         tmp_path / "c")  # fmt: skip
    assert more["initial"] == trained["final"] and more["final"] != more["initial"]


def test_an_adapter_on_another_model_is_one_line(tmp_path: Path, needs_shared: Path) -> None:
    run_inprocess([*TINY, "model.trainable=lora", "train.steps=1"], tmp_path / "a")
    other = ["model=tiny-opt", f"model.name_or_path={tmp_path / 'a' / 'model'}", "train.steps=0"]
    with pytest.raises(ZOError, match=r"adapter folder .* does not fit model=tiny-opt"):
        run_inprocess([*TINY, *other], tmp_path / "b")


def test_adapter_keys_are_checked(tmp_path: Path) -> None:
    from zo.config import ConfigError, validate

    for bad, needle in (
        (["model=tiny-roberta", "model.trainable=prefix"], "prefix: causal LMs only"),
        (["model.lora.r=0"], "r: >= 1"),
        (["model.trainable=adapters"], "all, lora or prefix"),
    ):
        with pytest.raises(ConfigError, match=needle):
            validate(compose([*TINY, *bad]))
    with pytest.raises(ZOError, match="set model.lora.target_modules to module names"):
        run_inprocess([*TINY, "model.trainable=lora", "model.lora.target_modules=[nope]"], tmp_path)
