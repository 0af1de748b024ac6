"""How well a ZO run's momentum points along the training loss's gradient, measured after the run.

    python -m zo.align RUN_DIR                   # every 100 steps, against 256 training examples
    python -m zo.align RUN_DIR --every 200 --examples 512

`log.align_every` compares the momentum m with the gradient of the step's own batch (8 or 16
examples). On a language model that gradient is mostly the batch's own noise, so a small cos² there
does not say whether m has found the direction the training loss falls in. This tool answers that.
It walks the run again from its trajectory log (zo.replay: each step's update from its logged
losses, no forward pass, bitwise the live run's weights on CPU). Every `--every` steps it takes ∇F,
the gradient of the mean training loss over a fixed sample of `--examples` training examples, and
∇f_b, the gradient of that step's batch, and writes one row:

    cos2_full    cos²(m, ∇F)      does the momentum point where the training loss falls?
    cos2_batch   cos²(m, ∇f_b)    what log.align_every logs at that step
    batch_full   cos²(∇f_b, ∇F)   how much of a batch gradient is the shared direction
    inv_d        1/d              a random direction's expected cos²

m is the optimizer's reference vector (zo.runner.alignment): the momentum, or the step's z for
methods without one, whose cos² is 1/d by construction. With ∇f_b = ∇F + noise, cos2_batch ≈
cos2_full · batch_full, so a small batch_full hides an aligned momentum.

Rows go to RUN_DIR/alignment_full.jsonl (rewritten by each call; each row as it is measured) and
to the screen. Memory: the model, two fp32 parameter-sized gradients and the activations of one
chunk (`--chunk`). Time: one backward over `--examples` + one over a batch per row, plus the
replay's noise draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from zo import ZOError
from zo.noise import mix
from zo.replay import apply, start_of

ROWS = "alignment_full.jsonl"


def measure(run_dir: Path, every: int, examples: int, chunk: int) -> Iterator[dict]:
    """The rows described in the module docstring, for steps every, 2·every, ... up to the log's end,
    each as soon as it is measured."""
    from zo.objective import build_objective
    from zo.runner import cosine, gradient_of, load_data, mean_loss, train_batch

    run = start_of(run_dir)
    cfg, optimizer, model = run.cfg, run.optimizer, run.model
    data = load_data(cfg, run.task)
    objective = build_objective(
        run.task, cfg.model.kind, run.tokenizer, cfg.task.max_length, cfg.task.train_loss
    )
    order = torch.randperm(
        len(data.train), generator=torch.Generator().manual_seed(mix(cfg.train.seed, 0xA1))
    )
    fixed = [data.train[i] for i in order[:examples].tolist()]  # the quadratic: [], its exact gradient
    params, lr, records = optimizer.params, cfg.optimizer.lr, run.records
    last = records[-1][0] if records else 0

    def whole() -> None:  # the gradient of the mean loss over the fixed sample, in chunks
        mean_loss(objective, model, fixed, chunk, backward=True)

    done = 0
    for step in range(every, last + 1, every):
        done = apply(optimizer, records[done:step], lr, run.schedule, step, str(run_dir), start=done)
        batch = train_batch(data.train, cfg.train.batch_size, cfg.train.seed, step)
        grad_full = list(gradient_of(model, params, whole))
        grad_batch = list(gradient_of(model, params, lambda b=batch: objective.loss(model, b).backward()))
        refs = [optimizer.reference_vector(i) for i in range(len(params))]
        yield {
            "step": step,
            "cos2_full": cosine(refs, grad_full) ** 2,
            "cos2_batch": cosine(refs, grad_batch) ** 2,
            "batch_full": cosine(grad_batch, grad_full) ** 2,
            "inv_d": 1.0 / optimizer.d,
            "examples": len(fixed),
        }  # fmt: skip
    optimizer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zo.align", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=int, default=100, help="steps between rows (default 100)")
    parser.add_argument("--examples", type=int, default=256, help="training examples in ∇F (default 256)")
    parser.add_argument("--chunk", type=int, default=16, help="examples per backward (default 16)")
    args = parser.parse_args(argv)
    if min(args.every, args.examples, args.chunk) < 1:
        parser.error("--every, --examples and --chunk must be at least 1")
    if not (args.run_dir / "config.yaml").is_file():
        print(f"error: {args.run_dir} is not a run folder (it has no config.yaml)", file=sys.stderr)
        return 1
    out, count = args.run_dir / ROWS, 0
    try:
        with out.open("w") as f:  # row by row: a long walk that is stopped keeps what it measured
            print(f"{'step':>6} {'cos2_full·d':>12} {'cos2_batch·d':>13} {'batch_full':>11}", flush=True)
            for r in measure(args.run_dir, args.every, args.examples, args.chunk):
                f.write(json.dumps(r) + "\n")
                f.flush()
                full, batch = r["cos2_full"] / r["inv_d"], r["cos2_batch"] / r["inv_d"]
                print(f"{r['step']:>6} {full:>12.3g} {batch:>13.3g} {r['batch_full']:>11.3g}", flush=True)
                count += 1
    except ZOError as err:
        error = str(err)
    else:
        error = None if count else f"{args.run_dir}'s log has fewer than --every={args.every} steps"
    if error is not None:
        if not count:
            out.unlink()
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"→ {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
