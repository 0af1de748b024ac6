"""Time one ZO step of each optimizer against a reference MeZO loop, side by side.

The reference is MeZO as its paper describes the implementation: loop over the
parameters, reseed and draw `torch.normal` per tensor, and perturb *in place*
(+λz, −2λz, +λz restore, then the update regenerates z once more: four draws of
z per step). Our optimizers perturb through forward hooks (exact restore) and
draw z three times (ConMeZO: four, for an exactly unit u).

Architectures are built from their configs with random weights: timing does not
depend on weight values, and no download is needed. On CUDA: RoBERTa-large,
OPT-1.3B (fp16) and SmolLM2-135M; on CPU: SmolLM2-135M and OPT-125M shapes.
Timings are medians over `--steps` after `--warmup` steps (CUDA events on GPU).
Memory is measured in a child process per architecture: two steps of each method
after one warm-up, next to one inference forward. On CUDA the peak is
`torch.cuda.max_memory_allocated`; on CPU it is the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs), with glibc told to mmap every allocation of 1 MiB or
more so that freed tensors leave RSS at once; it includes Python and torch themselves.
"transient" is the peak minus what was resident before the steps (weights and
optimizer state): what a step adds on top of them.

    python bench/step.py                 # prints a table, writes bench/results/step-<device>.json
    python bench/step.py --arch smollm2-135m --method mezo_v1   # MeZO's step with each noise draw
    python bench/step.py --only batched  # batched_probes vs sequential probes: MeZO, FZOO, LOREN
                                         # on SmolLM2-135M at 4x32 and 16x64 (step-batched-<device>.json)

`--only batched` times each of MeZO (2 probes), FZOO (9: 8 + x) and LOREN (10) twice: its probes one
forward each, and side by side in one forward over the batch repeated per probe
(`optimizer.batched_probes=true`, zo.batched), where the loss is computed per copy.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zo.optim import build
from zo.optim.base import Probe

ARCHS = {
    "smollm2-135m": (
        "llama",
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
        ),
    ),
    "opt-125m": (
        "opt",
        dict(
            hidden_size=768,
            ffn_dim=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            vocab_size=50272,
            word_embed_proj_dim=768,
        ),
    ),
    "opt-1.3b": (
        "opt",
        dict(
            hidden_size=2048,
            ffn_dim=8192,
            num_hidden_layers=24,
            num_attention_heads=32,
            vocab_size=50272,
            word_embed_proj_dim=2048,
        ),
    ),
    "roberta-large": (
        "roberta",
        dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            vocab_size=50265,
            max_position_embeddings=514,
        ),
    ),
}
GPU_SET = [
    ("opt-1.3b", torch.float16, 16, 64),
    ("roberta-large", torch.float32, 16, 64),
    ("smollm2-135m", torch.float32, 16, 64),
]
CPU_SET = [("opt-125m", torch.float32, 4, 32), ("smollm2-135m", torch.float32, 4, 32)]


def build_model(arch: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    model_type, kwargs = ARCHS[arch]
    config = AutoConfig.for_model(model_type, **kwargs | LAYERS)
    auto = AutoModelForMaskedLM if model_type == "roberta" else AutoModelForCausalLM
    torch.manual_seed(0)
    return auto.from_config(config).to(device=device, dtype=dtype).eval()


class ReferenceMeZO:
    """MeZO's reference loop: reseeded normals per tensor, perturbed in place (inexact in low precision)."""

    def __init__(self, model: nn.Module, lr: float, eps: float) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr, self.eps = lr, eps

    def _walk(self, seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(0.0, 1.0, size=p.shape, device=p.device, dtype=p.dtype)
            p.data.add_(z, alpha=scale)

    def step(self, loss_fn: Callable[[], torch.Tensor], seed: int) -> None:
        self._walk(seed, self.eps)
        plus = loss_fn()
        self._walk(seed, -2 * self.eps)
        minus = loss_fn()
        self._walk(seed, self.eps)
        projected = float((plus - minus) / (2 * self.eps))  # the reference syncs here
        self._walk(seed, -self.lr * projected)


def ours(name: str, **options) -> Callable:
    def make(model: nn.Module):
        opt = build(model, {"name": name, "lr": 1e-7, "eps": 1e-3, **options}, seed=0)

        def loss_at(probe: Probe | tuple[Probe, ...], loss_fn: Loss) -> float | list[float]:
            if isinstance(probe, tuple):  # batched_probes: one loss per probe, from one forward
                return loss_fn.copies(len(probe)).tolist()
            if not probe.grad:
                return float(loss_fn())
            with torch.enable_grad():  # first-order: the backward is part of the step
                loss = loss_fn()
                loss.backward()
            return float(loss.detach())

        def step(loss_fn: Callable[[], torch.Tensor], seed: int) -> None:
            opt.step(seed, lambda probe: loss_at(probe, loss_fn), 1e-7, 0.99)

        forwards = len(opt.probes()) if name != "mezo_svrg" else 4  # SVRG: its minibatch steps
        if options.get("batched_probes"):
            forwards = -(-forwards // (options.get("probe_chunk") or forwards))
        return step, opt.close, forwards  # close: remove its hooks before the next method drives the model

    return make


METHODS = {
    "reference_mezo": lambda model: (ReferenceMeZO(model, 1e-7, 1e-3).step, lambda: None, 2),
    "mezo": ours("mezo"),
    "mezo_v1": ours("mezo", noise_version=1),  # the Gaussian draw of runs logged before version 2 (zo.noise)
    "mezo_rademacher": ours("mezo", noise="rademacher"),  # z = ±1: the cheapest draw
    "mezo_momentum": ours("mezo_momentum"),
    "conmezo": ours("conmezo"),
    "conmezo_gaussian_u": ours("conmezo", unit_u=False),  # u = N(0, I)/√d: no norm pass
    "meazo": ours("meazo"),
    "zo_adam": ours("zo_adam"),
    "hizoo": ours("hizoo"),
    "lozo": ours("lozo"),
    "lozo_m": ours("lozo", momentum=0.9),
    "loren": ours("loren"),  # K = 10 one-sided probes a step
    # Anchor steps' "full" probes see the bench's one batch here: the timed steps alternate an anchor
    # (2 forwards over what would be the whole training set) and a minibatch step (4 forwards).
    "mezo_svrg": ours("mezo_svrg"),
    "fzoo": ours("fzoo"),  # 8 one-sided Rademacher probes + one at x
    "sparse_mezo": ours("sparse_mezo"),  # MeZO on the 20% smallest weights of each tensor
    "r_adazo": ours("r_adazo"),  # K = 2: three forwards (x, then x + λu_1, x + λu_2)
    "adamw": ours("adamw"),
    "sgd": ours("sgd"),
    # --only batched: the same step with its probes side by side in one forward (zo.batched)
    "mezo_batched": ours("mezo", batched_probes=True),
    "fzoo_batched": ours("fzoo", batched_probes=True),
    "loren_batched": ours("loren", batched_probes=True),
}
BATCHED = ["mezo", "mezo_batched", "fzoo", "fzoo_batched", "loren", "loren_batched"]
EXTRA = {"mezo_batched", "fzoo_batched", "loren_batched"}  # rows only --only or --method asks for
LAYERS: dict = {}  # --layers N: every architecture with N layers (a quick check, not a measurement)
BATCHED_SET = [("smollm2-135m", torch.float32, 4, 32), ("smollm2-135m", torch.float32, 16, 64)]


def _proc_status_mib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field)).split()[1]) / 2**10


def reset_peak(device: torch.device) -> float:
    """Start a fresh peak; returns the memory resident now (MiB)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap counts in RSS until glibc returns it
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS
    return _proc_status_mib("VmRSS")


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_mib("VmHWM")


def timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


class Loss:
    """The next-token loss of one fixed batch: `loss()` at the weights in place, `loss.copies(P)` the
    loss of each of P copies of the batch in one forward (batched probes: copy j's rows see probe j)."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor) -> None:
        self.model, self.tokens = model, tokens

    def __call__(self) -> torch.Tensor:
        return self.model(input_ids=self.tokens, labels=self.tokens).loss

    def copies(self, count: int) -> torch.Tensor:
        logits = self.model(input_ids=self.tokens.repeat(count, 1)).logits  # the copies' logits at once
        targets = self.tokens[:, 1:].flatten()
        return torch.stack(  # each copy's loss as transformers computes it (fp32, shifted), one at a time
            [F.cross_entropy(part[:, :-1].float().flatten(0, 1), targets) for part in logits.chunk(count)]
        )


def workload(arch: str, dtype: torch.dtype, batch: int, seq: int, device) -> tuple[nn.Module, Loss]:
    model = build_model(arch, dtype, device)
    tokens = torch.randint(0, ARCHS[arch][1]["vocab_size"], (batch, seq), device=device)
    return model, Loss(model, tokens)


def time_arch(arch: str, dtype: torch.dtype, batch: int, seq: int, args, device) -> list[dict]:
    """Median step time of each method, and of one forward, on one architecture."""
    model, loss_fn = workload(arch, dtype, batch, seq, device)
    with torch.no_grad():
        forward_ms = statistics.median(timed(loss_fn, device) for _ in range(args.steps + args.warmup))
        rows = []
        for method, make in selected(args).items():
            step, close, forwards = make(model)
            for t in range(args.warmup):  # compiles the kernels: not part of a step's time
                step(loss_fn, t)
            times = [
                timed(lambda t=t, s=step: s(loss_fn, t), device)
                for t in range(args.warmup, args.warmup + args.steps)
            ]
            rows.append(
                {
                    "arch": arch,
                    "dtype": str(dtype).removeprefix("torch."),
                    "batch": f"{batch}x{seq}",
                    "method": method,
                    "forwards": forwards,
                    "ms_per_step": statistics.median(times),
                    "forward_ms": forward_ms,
                }
            )
            close()
    reference = rows[0]["ms_per_step"]
    mezo = next((r["ms_per_step"] for r in rows if r["method"] == "mezo"), None)
    for row in rows:
        row["ratio_to_reference"] = row["ms_per_step"] / reference
        row["ratio_to_mezo"] = row["ms_per_step"] / mezo if mezo else None
    return rows


def selected(args) -> dict[str, Callable]:
    """The reference loop (every ratio is to it) and MeZO, then the methods asked for (default: all
    but the batched rows; --only batched: those)."""
    if args.only == "batched":
        return {"reference_mezo": METHODS["reference_mezo"], **{name: METHODS[name] for name in BATCHED}}
    keep = {"reference_mezo", "mezo", *(args.method or [m for m in METHODS if m not in EXTRA])}
    return {name: make for name, make in METHODS.items() if name in keep}


def measure_memory(arch: str, dtype: torch.dtype, batch: int, seq: int, device, args) -> dict:
    """{method: (peak MiB, transient MiB)} over two steps after one warm-up, and one inference forward.

    Runs in a process of its own (`--memory-of`): on CPU glibc must mmap big allocations from the
    start for RSS to follow the live tensors, and that slows steps down, so it can't share a
    process with the timings (nor with another architecture's leftover heap).
    """
    if device.type == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: mmap (and unmap) ≥ 1 MiB
    model, loss_fn = workload(arch, dtype, batch, seq, device)
    with torch.no_grad():
        loss_fn()
        out = {"inference": peak_over(loss_fn, device)}
        for method, make in selected(args).items():
            step, close, _ = make(model)
            step(loss_fn, 0)
            out[method] = peak_over(lambda s=step: [s(loss_fn, t) for t in (1, 2)], device)
            close()
    return out


def peak_over(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(peak, transient) in MiB while fn runs: transient is the peak minus what was resident before."""
    resting = reset_peak(device)
    fn()
    peak = peak_mib(device)
    return peak, peak - resting


def memory_in_child(arch: str, shape: str, args) -> dict:
    only = [word for m in args.method or [] for word in ("--method", m)]
    if args.only:
        only += ["--only", args.only]
    if args.layers:
        only += ["--layers", str(args.layers)]
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", f"{arch}@{shape}", *only],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--arch", action="append", help="only these architectures")
    parser.add_argument("--method", action="append", choices=list(METHODS), help="only these (and MeZO)")
    parser.add_argument("--only", choices=["batched"], help="batched: the batched-vs-sequential rows alone")
    parser.add_argument("--layers", type=int, help="override layer counts (quick check, not a measurement)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child process measuring memory
    args = parser.parse_args()
    if args.layers:
        LAYERS["num_hidden_layers"] = args.layers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = BATCHED_SET if args.only == "batched" else GPU_SET if device.type == "cuda" else CPU_SET
    plan = [p for p in shapes if not args.arch or p[0] in args.arch]
    if args.memory_of:
        _, dtype, b, s = next(p for p in plan if f"{p[0]}@{p[2]}x{p[3]}" == args.memory_of)
        print(json.dumps(measure_memory(args.memory_of.split("@")[0], dtype, b, s, device, args)))
        return
    rows = [row for arch, dtype, b, s in plan for row in time_arch(arch, dtype, b, s, args, device)]
    memory = {(arch, f"{b}x{s}"): memory_in_child(arch, f"{b}x{s}", args) for arch, _, b, s in plan}
    for row in rows:
        measured = memory[row["arch"], row["batch"]]
        row["peak_mib"], row["transient_mib"] = measured[row["method"]]
        row["peak_to_mezo"] = row["peak_mib"] / measured["mezo"][0]
        row["inference_peak_mib"], row["inference_transient_mib"] = measured["inference"]
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else (f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    )

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ZO step time on {machine}, torch {torch.__version__}")
    for col in (
        "arch",
        "dtype",
        "batch",
        "method",
        "fwd/step",
        "ms/step",
        "× reference",
        "× mezo",
        "fwd ms",
        "peak MiB",
        "transient",
        "infer MiB",
        "infer transient",
    ):
        table.add_column(col)
    for r in rows:
        peak, infer = r["peak_mib"], r["inference_peak_mib"]
        table.add_row(
            r["arch"],
            r["dtype"],
            r["batch"],
            r["method"],
            str(r["forwards"]),
            f"{r['ms_per_step']:.1f}",
            f"{r['ratio_to_reference']:.2f}",
            f"{r['ratio_to_mezo']:.2f}",
            f"{r['forward_ms']:.1f}",
            f"{peak:.0f} ({r['peak_to_mezo']:.2f}×)",
            f"{r['transient_mib']:.0f}",
            f"{infer:.0f}",
            f"{r['inference_transient_mib']:.0f}",
        )
    Console(width=150).print(table)
    out = args.out or Path(f"bench/results/step{'-batched' if args.only else ''}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "date": str(date.today()), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
