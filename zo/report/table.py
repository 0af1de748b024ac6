"""The paper's table layout (ConMeZO Tables 1 and 2): optimizers × tasks, mean ± std over seeds.

Each finished run contributes its reported score: the test score at the step chosen on dev where
the run selected on dev (MeZO's protocol), else its final test score. Accuracy, F1 and EM read as
percentages, as in the papers; a loss stays as it is. The last column averages the row over the
tasks, only where the row has every task (a mean over fewer tasks would not compare).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

PERCENT = {"accuracy", "f1", "em"}


@dataclass
class Cell:
    mean: float
    std: float
    n: int


@dataclass
class PaperTable:
    metric: str
    tasks: list[str]
    optimizers: list[str]
    cells: dict[tuple[str, str], Cell]  # (optimizer, task)

    def average(self, optimizer: str) -> float | None:
        means = [self.cells[optimizer, t].mean for t in self.tasks if (optimizer, t) in self.cells]
        return statistics.fmean(means) if len(means) == len(self.tasks) else None


def paper_table(rows: list[dict]) -> PaperTable | None:
    """From `runs_table` rows; None when no finished run has a score."""
    scores: dict[tuple[str, str], list[float]] = {}
    metrics = set()
    for r in rows:
        value = r["test_at_best_dev"] if r["test_at_best_dev"] is not None else r["final"]
        if r["status"] != "finished" or value is None:
            continue
        metrics.add(r["metric"])
        scale = 100.0 if r["metric"] in PERCENT else 1.0
        scores.setdefault((r["optimizer"], r["task"]), []).append(scale * value)
    if not scores:
        return None
    cells = {
        key: Cell(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
        for key, v in scores.items()
    }
    order = list(dict.fromkeys(r["optimizer"] for r in rows))
    optimizers = [o for o in order if any(k[0] == o for k in cells)]
    tasks = list(dict.fromkeys(k[1] for k in cells))
    return PaperTable("/".join(sorted(metrics)), tasks, optimizers, cells)


def _cell(table: PaperTable, optimizer: str, task: str, latex: bool) -> str:
    c = table.cells.get((optimizer, task))
    if c is None:
        return "—" if not latex else "--"
    if latex:
        return f"${c.mean:.1f}_{{\\pm {c.std:.1f}}}$"
    return f"{c.mean:.1f} ± {c.std:.1f}" + ("" if c.n == _seeds(table) else f" ({c.n})")


def _seeds(table: PaperTable) -> int:
    """The usual number of seeds per cell; cells with another count show theirs."""
    return statistics.mode(c.n for c in table.cells.values())


def _average(table: PaperTable, optimizer: str) -> str:
    avg = table.average(optimizer)
    return "—" if avg is None else f"{avg:.1f}"


def markdown(table: PaperTable) -> str:
    head = f"| {table.metric} | " + " | ".join(table.tasks) + " | avg |"
    rule = "|---" * (len(table.tasks) + 2) + "|"
    cells = {o: " | ".join(_cell(table, o, t, False) for t in table.tasks) for o in table.optimizers}
    body = [f"| {o} | {cells[o]} | {_average(table, o)} |" for o in table.optimizers]
    note = f"\nmean ± std over {_seeds(table)} seeds per cell (another count in parentheses)"
    return "\n".join([head, rule, *body]) + "\n" + note + "\n"


def latex(table: PaperTable) -> str:
    cols = "l" + "c" * (len(table.tasks) + 1)
    escape = lambda s: s.replace("_", r"\_")  # noqa: E731
    lines = [
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        f"{escape(table.metric)} & " + " & ".join(map(escape, table.tasks)) + " & avg \\\\",
        "\\midrule",
        *(
            f"{escape(o)} & "
            + " & ".join(_cell(table, o, t, True) for t in table.tasks)
            + f" & {_average(table, o).replace('—', '--')} \\\\"
            for o in table.optimizers
        ),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def write_table(table: PaperTable, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "table.md", out / "table.tex"]
    paths[0].write_text(markdown(table))
    paths[1].write_text(latex(table))
    return paths
