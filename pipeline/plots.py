"""The plots of a run folder, as PNG: learning curves, confusion matrix, expert-gate weights per class, and
predicted-vs-true scores for regression.

Figures are drawn on matplotlib's Agg canvas through `Figure` directly, never through pyplot, so plotting needs no
display, leaks no global figure state in long training runs, and is safe from worker threads. Image sizes are
fixed (inches times DPI, no tight bounding box), so a plot's pixel size depends only on its inputs.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from matplotlib import font_manager, rc_context
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.ticker import MaxNLocator

from .metrics import EXPERTS, expert_gates_by_class

DPI = 100
# Chinese class names (CHERMA) need a CJK font; matplotlib falls back glyph by glyph along the installed ones.
FONTS = ["DejaVu Sans", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "SimHei",
         "Microsoft YaHei", "PingFang SC"]
EXPERT_COLOURS = ("tab:blue", "tab:orange", "tab:green")


@functools.cache
def _installed_fonts() -> tuple[str, ...]:
    # Naming absent families would make matplotlib log a "not found" warning on every text it draws.
    installed = {font.name for font in font_manager.fontManager.ttflist}
    return tuple(name for name in FONTS if name in installed) or ("sans-serif",)


def _with_fonts(plot):
    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        with rc_context({"font.family": list(_installed_fonts())}):
            return plot(*args, **kwargs)
    return drawn


@_with_fonts
def plot_learning_curves(history: list[dict], path, metric: str, losses=("train_loss",)) -> Path:
    """Losses (left) and a dev metric (right) per epoch; the best epoch of the metric is marked.

    history: one dict per epoch, e.g. {"epoch": 1, "train_loss": 0.9, "dev": {"Weighted_F1": 0.55}}; a key
    with "/" reads nested dicts ("dev/Weighted_F1"); missing or None values are skipped; "epoch" defaults to
    the position from 1. Lower is better when the metric's name contains "MAE" or "loss", else higher.
    """
    if not history:
        raise ValueError(f"no epochs to plot for {path}: the history is empty")
    epochs = [entry.get("epoch", i + 1) for i, entry in enumerate(history)]
    fig = _figure(10.0, 4.0)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key in losses:
        xs, ys = _series(history, epochs, key)
        if xs:
            loss_ax.plot(xs, ys, marker="o", label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    if loss_ax.lines:
        loss_ax.legend()
    xs, ys = _series(history, epochs, metric)
    if xs:
        metric_ax.plot(xs, ys, marker="o", color="tab:purple")
        lower_is_better = "mae" in metric.lower() or "loss" in metric.lower()
        best = int(np.argmin(ys) if lower_is_better else np.argmax(ys))
        metric_ax.scatter([xs[best]], [ys[best]], s=120, facecolors="none", edgecolors="red", zorder=3,
                          label=f"best {ys[best]:.4f} (epoch {xs[best]})")
        metric_ax.legend()
    metric_ax.set(xlabel="epoch", ylabel=metric, title=metric)
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


@_with_fonts
def plot_confusion_matrix(confusion, class_names, path, title: str = "confusion matrix") -> Path:
    """Confusion matrix normalised per true class (each row sums to 1), with the counts in the cells.

    confusion: (K, K) counts, rows = true class, columns = predicted class (as in compute_metrics' output).
    The figure is 1.5 + 0.8 K inches square, at least 5.
    """
    counts = np.asarray(confusion, dtype=np.float64)  # (K, K)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix for {path} has shape {counts.shape}, expected ({k}, {k}) for "
                         f"{k} class names")
    support = counts.sum(axis=1, keepdims=True)  # (K, 1)
    rates = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)  # (K, K)
    side = max(5.0, 1.5 + 0.8 * k)
    fig = _figure(side, side)
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                    color=colour, fontsize=8)
    names = _class_labels(class_names)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, path)


@_with_fonts
def plot_expert_gates(gates, labels, class_names, path, experts=EXPERTS,
                      title: str = "expert-gate weights per true class") -> Path:
    """Mean expert-gate weights per true class as stacked bars (one bar per class, one segment per expert).

    gates: (N, E) gate weights of the rows; labels: (N,) their true class indices. Classes without rows are
    shown empty; the tick labels give each class's row count. Any weights that sum to 1 per row plot the same
    way: the modality weights with experts = the modality names.
    """
    by_class = expert_gates_by_class(gates, labels, class_names, experts)
    fig = _figure(max(6.0, 2.0 + 0.9 * len(class_names)), 4.5)
    ax = fig.subplots()
    positions = np.arange(len(class_names))
    bottom = np.zeros(len(class_names))
    for expert, colour in zip(experts, EXPERT_COLOURS):
        heights = np.array([by_class[str(c)][expert] or 0.0 for c in class_names])  # (K,)
        ax.bar(positions, heights, bottom=bottom, label=expert, color=colour)
        bottom += heights
    counts = [by_class[str(c)]["n"] for c in class_names]
    ticks = [f"{label}\n(n={n})" for label, n in zip(_class_labels(class_names), counts)]
    ax.set_xticks(positions, ticks)
    ax.set(ylabel="mean gate weight", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


@_with_fonts
def plot_regression(y_true, y_pred, path, score_range: tuple[float, float]) -> Path:
    """Predicted against true scores over the task's range, with the identity line (6 x 6 inches)."""
    truth = np.asarray(y_true, dtype=np.float64).reshape(-1)  # (N,)
    preds = np.asarray(y_pred, dtype=np.float64).reshape(-1)  # (N,)
    if truth.shape != preds.shape:
        raise ValueError(f"scatter for {path}: {len(truth)} true scores but {len(preds)} predictions")
    low, high = score_range
    margin = 0.05 * (high - low)
    fig = _figure(6.0, 6.0)
    ax = fig.subplots()
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="prediction = truth")
    # Scores come in steps (0.2 for SIMS, 1/3 for MOSEI); transparency shows how many points share a spot.
    ax.scatter(truth, preds, s=14, alpha=0.35, color="tab:blue", label=f"{len(truth)} rows")
    ax.set(xlim=(low - margin, high + margin), ylim=(low - margin, high + margin), xlabel="true score",
           ylabel="predicted score", title="predicted vs true", aspect="equal")
    ax.legend(loc="upper left")
    return _save(fig, path)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _series(history: list[dict], epochs: list, key: str) -> tuple[list, list]:
    xs, ys = [], []
    for epoch, entry in zip(epochs, history):
        value = entry
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            xs.append(epoch)
            ys.append(float(value))
    return xs, ys


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


@functools.cache
def _drawable(text: str) -> bool:
    fonts = [FT2Font(font_manager.findfont(font_manager.FontProperties(family=name))) for name in _installed_fonts()]
    return all(any(font.get_char_index(ord(ch)) for font in fonts) for ch in text if not ch.isspace())


def _class_labels(class_names) -> list[str]:
    # Without a CJK font Chinese names would print as empty boxes; "#i" still points into the metrics' class list.
    return [str(name) if _drawable(str(name)) else f"#{i}" for i, name in enumerate(class_names)]
