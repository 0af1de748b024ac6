"""Models larger than one device (zo.placement): accelerate device maps and train.device=cuda:N.

A CPU-only machine can place every module only on the CPU, so these tests check the plumbing a
split takes (accelerate's hooks on every mapped module, the chunked LM head inside accelerate's
forward, the per-device sums) and that it changes nothing; a GPU session runs a real split.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY, compose, read_metrics, run_inprocess
from zo import ZOError
from zo.config import ConfigError, model_config, optim_config, validate
from zo.models import load_model
from zo.optim import build
from zo.placement import device_map, pick_device

# tiny-llama's top-level modules, each its own map entry (as accelerate splits a model by layers)
SPLIT = {m: "cpu" for m in ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm",
                            "model.rotary_emb", "lm_head")}  # fmt: skip
OVERRIDE = "+model.device_map={" + ", ".join(f"{m}: {d}" for m, d in SPLIT.items()) + "}"


def tiny(**model):
    cfg = model_config(compose([*TINY, "optimizer=conmezo"]))
    for key, value in model.items():
        setattr(cfg, key, value)
    return cfg


def test_split_device_map_run_equals_unsplit_run(tmp_path, needs_shared):
    """Same metrics, same trajectory log, same finetuned weights, bit for bit (ConMeZO: its ‖m‖ and
    ‖n‖ are the sums over buffers that a split gathers across devices)."""
    base = [*TINY, "optimizer=conmezo", "train.steps=6", "train.eval_every=3"]
    runs = {}
    for name, extra in {"whole": [], "split": [OVERRIDE], "auto": ["model.device_map=auto"]}.items():
        summary = run_inprocess([*base, *extra], tmp_path / name)
        assert summary["status"] == "finished"
        runs[name] = tmp_path / name
    whole = read_metrics(runs["whole"] / "metrics.jsonl")
    weights = load_file(runs["whole"] / "model" / "model.safetensors")
    for name in ("split", "auto"):
        assert read_metrics(runs[name] / "metrics.jsonl") == whole, name
        assert (runs[name] / "trajectory.bin").read_bytes() == (runs["whole"] / "trajectory.bin").read_bytes()
        other = load_file(runs[name] / "model" / "model.safetensors")
        assert other.keys() == weights.keys()
        assert all(torch.equal(other[k], weights[k]) for k in weights), name
    assert whole[-1]["loss"] != whole[1]["loss"]  # the run trained: equal because placement is neutral


def test_device_map_puts_accelerate_hooks_and_chunked_head_inside_them():
    model, _ = load_model(tiny(device_map={"": "cpu"}), 2, 0, torch.device("cpu"))
    assert hasattr(model, "_hf_hook") and model.hf_device_map == {"": "cpu"}
    model, _ = load_model(tiny(device_map=SPLIT), 2, 0, torch.device("cpu"))
    head = model.lm_head
    assert all(hasattr(m, "_hf_hook") for m in (model.model.embed_tokens, model.model.layers[0], head))
    accelerate_forward, inner = vars(head)["forward"], vars(head)["_old_forward"]
    opt = build(model, optim_config(compose([*TINY, "optimizer=conmezo"])), 0)
    assert opt.d == sum(p.numel() for p in model.parameters())
    assert vars(head)["forward"] is accelerate_forward  # accelerate still moves the head's input
    assert type(vars(head)["_old_forward"]).__name__ == "_ChunkedLinear"  # the chunks run inside it
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        losses = opt.step(1, lambda probe: float(model(ids).logits.float().pow(2).mean()), 1e-3, 0.1)
    assert losses[0] != losses[1]  # the head and the layers were perturbed
    opt.close()
    assert vars(head)["forward"] is accelerate_forward and vars(head)["_old_forward"] is inner


def test_lora_under_a_device_map_trains_only_the_adapters():
    model, _ = load_model(tiny(device_map=SPLIT, trainable="lora"), 2, 0, torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize(
    ("spec", "max_memory", "message"),
    [
        ({"": "disk"}, None, "offloaded weights cannot be perturbed in place"),
        ({"model.embed_tokens": "cpu"}, None, "name every top-level module"),
        ({"": "gpu"}, None, "is not a device"),
        ({"": "cuda:0"} if not torch.cuda.is_available() else {"": 99}, None, "CUDA device(s) are visible"),
        ({"": "cpu"}, {"cpu": "1GiB"}, "max_memory applies to model.device_map=auto"),
        ("balanced", None, "use auto or a map of module names"),
    ],
)
def test_bad_device_maps_are_named(spec, max_memory, message):
    with pytest.raises(ZOError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(tiny(device_map=spec, max_memory=max_memory), 2, 0, torch.device("cpu"))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=tiny-llama", "task=sst2", "model.trainable=prefix", "model.device_map=auto"],
        ["model=quadratic", "task=quadratic", "model.device_map=auto"],
    ],
)
def test_device_map_refusals_for_prefix_and_the_quadratic_are_config_errors(overrides):
    """Refused before anything loads (exit 2), with what to use instead."""
    with pytest.raises(
        ConfigError, match=r"model.device_map=auto is invalid: allowed null with model=quadratic"
    ):
        validate(compose(overrides))


def test_auto_map_on_a_cpu_only_machine_is_the_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto places on it")
    model, _ = load_model(tiny(), 2, 0)
    assert device_map(model, "auto", None) == {"": "cpu"}


def test_train_device_accepts_cuda_n_and_names_what_is_visible():
    assert pick_device("cpu") == torch.device("cpu")
    count = torch.cuda.device_count()
    if count:
        assert pick_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
    with pytest.raises(ZOError, match="CUDA device"):
        pick_device(f"cuda:{count}")
    with pytest.raises(ZOError, match="is not a device"):
        pick_device("tpu:0")


# The first half on GPU 0 (with the tied embedding and head), the second half elsewhere.
FIRST = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "lm_head": 0}
GPU_SPLITS = {
    "cuda:0+cpu": FIRST | {"model.layers.1": "cpu", "model.norm": "cpu"},
    "cuda:0+cuda:1": FIRST | {"model.layers.1": 1, "model.norm": 1},
}


@pytest.mark.parametrize("split", list(GPU_SPLITS))
def test_a_real_split_follows_the_one_gpu_run(tmp_path, needs_shared, split):
    """On GPUs: the split run's metrics follow the one-GPU run's (not bitwise: the CPU's and a GPU's
    float sums differ), and the summary names every device."""
    if torch.cuda.device_count() < split.count("cuda"):
        pytest.skip(f"needs {split.count('cuda')} GPU(s)")
    base = [*TINY, "optimizer=conmezo", "train.steps=6", "train.eval_every=3", "train.device=cuda:0"]
    spec = "{" + ", ".join(f"{m}: {d}" for m, d in GPU_SPLITS[split].items()) + "}"
    one = run_inprocess(base, tmp_path / "one")
    two = run_inprocess([*base, f"+model.device_map={spec}"], tmp_path / "split")
    assert (one["device"], two["device"]) == ("cuda:0", split)
    ref, got = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("one", "split"))
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(ref[1:], got[1:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4)
