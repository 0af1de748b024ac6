"""Figures drawn from the numbers only, so each can be checked against its CSV."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from zo.report.numbers import Curve, Heatmap


def pyplot():
    """pyplot on the Agg backend: reports are written on clusters without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> None:
    for ext in ("png", "svg"):
        fig.savefig(out / f"{stem}.{ext}", dpi=150)


def _wide(values: Iterable[float]) -> bool:
    """Positive values over more than two decades (a diverging run): drawn on a log scale."""
    v = [x for x in values if x == x]  # NaN aside
    return bool(v) and min(v) > 0 and max(v) / min(v) > 100


def _panel_axes(titles: list[str], rows_per_panel: int):
    """A grid of panels (at most 4 across), each `rows_per_panel` axes tall; returns fig, {title: axes}."""
    cols = min(len(titles), 4)
    grid_rows = -(-len(titles) // cols) * rows_per_panel
    fig, grid = pyplot().subplots(
        grid_rows, cols, figsize=(4.5 * cols + 2.5, 3.2 * grid_rows), squeeze=False, layout="constrained"
    )
    axes = {}
    for k, title in enumerate(titles):
        row, col = divmod(k, cols)
        axes[title] = [grid[row * rows_per_panel + i][col] for i in range(rows_per_panel)]
        axes[title][0].set_title(title)
    for k in range(len(titles), grid_rows // rows_per_panel * cols):
        row, col = divmod(k, cols)
        for i in range(rows_per_panel):
            grid[row * rows_per_panel + i][col].set_visible(False)
    return fig, axes


def _colors(labels: Iterable[str]) -> dict[str, tuple]:
    """One colour per label, the same in every panel, so one legend serves the whole figure."""
    plt = pyplot()
    names = sorted(set(labels))
    if len(names) <= 20:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        return {n: cmap(i) for i, n in enumerate(names)}
    cmap = plt.get_cmap("turbo")
    return {n: cmap(i / (len(names) - 1)) for i, n in enumerate(names)}


def _draw(ax, curve: Curve, color: tuple) -> None:
    import numpy as np

    mean, std = np.array(curve.mean), np.array(curve.std)
    few = len(curve.steps) <= 30  # evaluations (every 100 of 1000 steps): mark them; a lone one shows
    ax.plot(curve.steps, mean, label=curve.label, color=color, marker="o" if few else None, markersize=3)
    ax.fill_between(curve.steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(curve.x)


def _legend(fig, colors: dict[str, tuple], extra: Iterable = ()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, label=name) for name, c in colors.items()]
    fig.legend(handles=[*handles, *extra], loc="outside right upper", fontsize=7)


def plot_heatmaps(maps: list[Heatmap], out: Path, title: str = ""):
    """One annotated θ × β panel per setting (like ConMeZO Fig. 5); returns the figure."""
    import numpy as np
    from matplotlib.colors import LogNorm

    fig, axes = _panel_axes([h.facet for h in maps], 1)
    for h in maps:
        ax = axes[h.facet][0]
        grid = np.array([[np.nan if v is None else v for v in row] for row in h.mean], dtype=float)
        lower = h.metric.endswith("loss")
        norm = LogNorm() if lower and _wide(grid.ravel()) else None
        image = ax.imshow(grid, cmap="viridis_r" if lower else "viridis", norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                r, g, b, _ = image.cmap(image.norm(v))
                ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"  # readable on the cell
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color=ink, fontsize=8)
        ax.set_xticks(range(len(h.betas)), [f"{b:g}" for b in h.betas])
        ax.set_yticks(range(len(h.thetas)), [f"{t:g}" for t in h.thetas])
        ax.set(xlabel="β", ylabel="θ", title=" ".join(p for p in (h.facet, title) if p))
        fig.colorbar(image, ax=ax, label=h.metric)
    _save(fig, out, "heatmap")
    return fig


def plot_curves(curves: list[Curve], out: Path, stem: str = "curves"):
    """Each panel's series vs step (the metric on top, the training loss below it when logged apart),
    saved as `<stem>.png` and `.svg`; returns the figure."""
    with_train = any(c.series == "train_loss" for c in curves)
    fig, axes = _panel_axes(list(dict.fromkeys(c.panel for c in curves)), 2 if with_train else 1)
    colors = _colors(c.label for c in curves)
    for curve in curves:
        ax = axes[curve.panel][int(curve.series == "train_loss")]
        _draw(ax, curve, colors[curve.label])
        ax.set_ylabel(curve.series)
    for ax in (ax for column in axes.values() for ax in column):
        if _wide(y for line in ax.get_lines() for y in line.get_ydata()):
            ax.set_yscale("log")
    _legend(fig, colors)
    _save(fig, out, stem)
    return fig


def plot_alignment(curves: list[Curve], inv_d: dict[str, float], out: Path):
    """cos²(momentum, gradient) vs step against each panel's 1/d (like ConMeZO Fig. 6); returns the figure."""
    from matplotlib.lines import Line2D

    fig, axes = _panel_axes(list(dict.fromkeys(c.panel for c in curves)), 1)
    colors = _colors(c.label for c in curves)
    for curve in curves:
        _draw(axes[curve.panel][0], curve, colors[curve.label])
    random = "1/d (random direction)"
    for panel, (ax,) in axes.items():
        if panel in inv_d:
            ax.axhline(inv_d[panel], color="k", linestyle="--", linewidth=1, label=random)
        ax.set(yscale="log", ylabel="cos²")
    _legend(fig, colors, [Line2D([], [], color="k", linestyle="--", label=random)] if inv_d else [])
    _save(fig, out, "alignment")
    return fig
