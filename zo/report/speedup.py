"""Steps each method needs to reach the baseline's final eval loss, and the speedup over the baseline.

Per panel (a task, in the convergence study) the target is the baseline optimizer's final test
`eval_loss` (or another evaluated loss, `series`: the dev split's `dev_eval_loss`) averaged over
its seeds (the seeds that finished: an unfinished run has no final). A method's `steps` are the
first evaluated step where its mean-over-seeds loss is ≤ the target,
counting only steps every seed of the method has logged (a mean over the seeds that got there first
would be a different number); `steps_seed<N>` is each seed's own first such step. The speedup is
baseline steps / method steps: above 1, the method gets there first (none where the method is
there at step 0, before its first update: no optimizer is faster than another at step 0).

Its interval is a percentile bootstrap over seeds: each draw resamples the seeds of every method,
the baseline's included, with replacement and recomputes the whole statistic from the drawn seeds,
the target too (so the baseline always reaches its own target, as in the point estimate). A draw
where the method never reaches the target gives no ratio; `reached` is the fraction that did, and
the interval is taken over those. The generator's seed is fixed and each (panel, method) draws
from its own stream, seeded by its runs' names: a report is reproducible, and a row's interval
does not move when the sweep is extended by another task or method.

`<metric>_at_reach` and `dev_<metric>_at_reach` are the runs' scores (mean over seeds) at the
evaluation where the mean curve reached the target: a method can match a loss and not the accuracy.

`unit="forwards"` measures the same on the forwards each run had spent by each evaluation (the
runner's per-step count, in batches; `Run.forwards_at`) instead of its steps: FZOO's step costs 9
forwards, MeZO's 2, so "how many steps" and "how much compute" rank them differently.

`smooth` = K > 1 replaces every curve (each draw's mean curve, and each seed's own for
`steps_seed<N>`) by its trailing mean over K evaluations, defined from the K-th evaluation on; the
target is then the baseline's mean over its last K evaluations. Why: on 300 held-out examples one
evaluation's loss moves by a few hundredths, so a baseline whose last evaluation lands on a bump
sets a target that is mostly that evaluation's noise (SmolLM2 MeZO on `bbcnews`: dev loss 0.340
at step 800, 0.411 at 1000), one that every method may "reach" at step 0. A trailing window is
causal: a method is there at a step only by what was logged up to it.
"""

from __future__ import annotations

import zlib

import numpy as np

from zo.report.numbers import lines
from zo.report.runs import ReportError, Run

UNITS = ("steps", "forwards")
SERIES = "eval_loss"  # the test split's loss: what "gets there first" is measured on, by default
RESAMPLES = 2000
LEVEL = 0.95
RNG_SEED = 0


def _table(runs: list[Run], series: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[seed, step]) over the evaluated steps every run logged `series` at."""
    logged = [{r["step"]: r[series] for r in run.evals if r.get(series) is not None} for run in runs]
    steps = sorted(set.intersection(*(set(t) for t in logged))) if logged else []
    return np.array(steps, dtype=int), np.array([[t[s] for s in steps] for t in logged], dtype=float)


def _trailing(steps: np.ndarray, curves: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(steps, curves) with each row of `curves` replaced by its trailing mean over `k` columns,
    from the k-th column on (k = 1: unchanged)."""
    if k == 1:
        return steps, curves
    sums = np.cumsum(curves, axis=-1)
    sums[..., k:] = sums[..., k:] - sums[..., :-k]
    return steps[k - 1 :], sums[..., k - 1 :] / k


def _spent(run: Run, steps: np.ndarray, unit: str) -> np.ndarray:
    """`steps` in `unit`: themselves, or the forwards `run` had spent by each."""
    return steps if unit == "steps" else np.array(run.spent(steps.tolist()), dtype=float)


def counts_forwards(runs: list[Run]) -> bool:
    """Whether every run logged its forwards, so the speedup can be counted in them."""
    return bool(runs) and all(run.forwards_at([0]) is not None for run in runs)


def _first_reach(steps: np.ndarray, curves: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row of `curves` (one draw's mean curve), the first step at or below its target; NaN if none."""
    hit = curves <= target[:, None]
    return np.where(hit.any(axis=1), steps[hit.argmax(axis=1)], np.nan)


def _mean_curves(values: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean curve over the seeds of each draw: draws[b] indexes the seeds (rows) of `values`."""
    return values[draws].mean(axis=1)


def _rng(seed: int, runs: list[Run]) -> np.random.Generator:
    """The bootstrap stream of one method's seeds: a function of its runs' names alone, not of the
    order panels and methods come in (one shared stream would shift every later row's draws when a
    task or method is added). Not the panel's label: that names only the keys that vary."""
    return np.random.default_rng(
        [seed, *(zlib.crc32(name.encode()) for name in sorted(r.name for r in runs))]
    )


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _step(value: float) -> int | float | None:
    """A step (or a count of forwards, whole unless a probe ran over the whole training set)."""
    if np.isnan(value):
        return None
    return int(value) if float(value).is_integer() else round(float(value), 2)


class _Method:
    """One method's seeds in a panel: its table of eval losses and the seed draws (identity first)."""

    def __init__(
        self, name: str, runs: list[Run], series: str, seed: int, resamples: int, smooth: int, unit: str
    ) -> None:
        self.name, self.runs, self.series, self.smooth, self.unit = name, runs, series, smooth, unit
        self.trained, self.values = _table(runs, series)  # the evaluated training steps
        self.steps = _spent(runs[0], self.trained, unit)  # the seeds of a method spend the same a step
        n = len(runs)
        self.draws = np.vstack([np.arange(n), _rng(seed, runs).integers(0, n, (resamples, n))])

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, each draw's mean curve), smoothed; no steps where fewer than `smooth` were logged."""
        return _trailing(self.steps, _mean_curves(self.values, self.draws), self.smooth)

    def reach(self, targets: np.ndarray) -> np.ndarray:
        """Per draw, the first step the draw's mean curve is at or below that draw's target."""
        steps, curves = self.curves()
        if not steps.size:
            return np.full(len(self.draws), np.nan)
        return _first_reach(steps, curves, targets)

    def scores_at(self, reached: float) -> dict[str, float | None]:
        """The run's metric on test and dev (mean over the seeds) at the evaluation where the mean
        curve reached the target (`reached`, in the method's unit; NaN: nowhere): what the runs
        score once they are as good as the baseline's end, so a method that gets there first in
        loss but not in accuracy shows it."""
        metric = self.runs[0].metric
        names = (metric, f"dev_{metric}")
        if np.isnan(reached):
            return {f"{name}_at_reach": None for name in names}
        step = int(self.trained[np.flatnonzero(self.steps == reached)[0]])
        out = {}
        for name in names:
            values = [v for r in self.runs if (v := r.value_at(step, name)) is not None]
            out[f"{name}_at_reach"] = float(np.mean(values)) if values else None
        return out

    def seed_steps(self, run: Run, target: float) -> int | None:
        """The first step `run`'s own (smoothed) curve is at or below `target`: every step it logged."""
        steps, values = _table([run], self.series)
        steps, curve = _trailing(_spent(run, steps, self.unit), values, self.smooth)
        return _step(_first_reach(steps, curve, np.array([target]))[0]) if steps.size else None


def speedup_data(
    runs: list[Run],
    baseline: str = "mezo",
    resamples: int = RESAMPLES,
    seed: int = RNG_SEED,
    series: str = SERIES,
    smooth: int = 1,
    unit: str = "steps",
) -> list[dict]:
    """One row per (panel, method) of every panel with a finished `baseline` run; see the module docstring.

    The baseline comes first in its panel (its speedup is 1 by construction), then the others by label.
    """
    if unit not in UNITS:
        raise ReportError(f"unit {unit!r}: the speedup counts one of {', '.join(UNITS)}")
    if smooth < 1:
        raise ReportError(f"--smooth {smooth}: the window is a count of evaluations, 1 or more")
    by_panel: dict[str, list[tuple[str, list[Run]]]] = {}
    for name, panel, members in lines(runs):
        by_panel.setdefault(panel, []).append((name, members))
    rows = []
    for panel, methods in by_panel.items():
        base = [(name, m) for name, m in methods if m[0].get("optimizer.name") == baseline]
        if len(base) > 1:
            raise ReportError(
                f"panel {panel!r} has {len(base)} {baseline} settings ({', '.join(n for n, _ in base)}); "
                "the speedup needs one: report on a folder with one, or pick another --baseline"
            )
        finished = [r for _, m in base for r in m if r.value_at(None, series) is not None]
        if not finished:
            continue
        ref = _Method(base[0][0], finished, series, seed, resamples, smooth, unit)
        steps, curves = ref.curves()
        if not steps.size:
            raise ReportError(
                f"panel {panel!r}: {baseline} evaluated {series} at {ref.steps.size} steps, fewer than "
                f"--smooth {smooth}; give a smaller window"
            )
        targets = curves[:, -1]  # each draw's mean final eval loss (over the last `smooth` evaluations)
        ref_reach = _first_reach(steps, curves, targets)
        others = sorted(((name, m) for name, m in methods if m is not base[0][1]), key=lambda nm: nm[0])
        for method in [ref, *(_Method(name, m, series, seed, resamples, smooth, unit) for name, m in others)]:
            rows.append(_row(panel, baseline, method, targets, ref_reach))
    return rows


def _row(panel: str, baseline: str, method: _Method, targets: np.ndarray, ref_reach: np.ndarray) -> dict:
    """The speedup.csv row of one method: the point estimate (draw 0) and the bootstrap (the rest)."""
    reach = method.reach(targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(reach > 0, ref_reach / reach, np.nan)  # at step 0 there is nothing to compare
    boot = ratio[1:][~np.isnan(ratio[1:])]
    tail = 50 * (1 - LEVEL)
    low, high = (float(q) for q in np.percentile(boot, [tail, 100 - tail])) if boot.size else (None, None)
    first = method.runs[0]
    finals = [v for r in method.runs if (v := r.value_at(None, method.series)) is not None]
    target = float(targets[0])
    row = {
        "panel": panel,
        "task": first.get("task.name"),
        "label": method.name,
        "optimizer": first.get("optimizer.name"),
        "baseline": baseline,
        "series": method.series,
        "smooth": method.smooth,
        "target": target,
        "seeds": len(method.runs),
        "evaluated_to": _step(method.steps[-1]) if method.steps.size else None,
        "final": float(np.mean(finals)) if finals else None,
        method.unit: _step(reach[0]),
        f"baseline_{method.unit}": _step(ref_reach[0]),
        "speedup": _number(ratio[0]),
        "speedup_lo": low,
        "speedup_hi": high,
        "reached": float(np.mean(~np.isnan(reach[1:]))) if len(reach) > 1 else None,
        "resamples": len(reach) - 1,
        **method.scores_at(reach[0]),
    }
    for run in sorted(method.runs, key=lambda r: r.get("train.seed") or 0):
        row[f"{method.unit}_seed{run.get('train.seed')}"] = method.seed_steps(run, target)
    return row
