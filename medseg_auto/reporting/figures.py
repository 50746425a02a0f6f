"""The report's charts as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state): the
budget timeline, learning curves against minutes, and Dice and HD95 per fold. Every number drawn comes from
the model card given.

They are drawn with matplotlib's default style whatever the process changed before (nnU-Net's progress plot
sets seaborn's font scale of 2.5 for the whole process).
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np

DPI = 80
PHASE_COLOURS = {"ingest": "#8c8c8c", "plan": "#5b8def", "export": "#f2a93b"}
FOLD_COLOURS = ["#2a9d8f", "#e76f51", "#6a4c93", "#e9c46a", "#264653", "#f4a261"]


def _default_style(draw):
    """Run ``draw`` under matplotlib's default rcParams, restoring the process's own afterwards."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context():
            matplotlib.rcdefaults()
            return draw(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, layout: str | None = "tight"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


@_default_style
def timeline(phases: list[tuple[str, float]], budget_seconds: float) -> bytes:
    """One bar: each phase's minutes in order, against the budget (a line at -t)."""
    fig = _figure(10, 1.9)
    ax = fig.add_subplot()
    left = 0.0
    for i, (name, seconds) in enumerate(phases):
        minutes = seconds / 60.0
        colour = PHASE_COLOURS.get(name.split()[0], FOLD_COLOURS[i % len(FOLD_COLOURS)])
        ax.barh(0, minutes, left=left, color=colour, edgecolor="white", height=0.6)
        if minutes > budget_seconds / 60.0 * 0.06:
            ax.text(left + minutes / 2, 0, f"{name}\n{minutes:.1f} min", ha="center", va="center", fontsize=8,
                    color="white")
        left += minutes
    ax.axvline(budget_seconds / 60.0, color="black", linestyle="--", linewidth=1.2)
    ax.text(budget_seconds / 60.0, 0.42, f" -t {budget_seconds / 60.0:g} min", va="bottom", fontsize=8)
    ax.set_xlim(0, max(left, budget_seconds / 60.0) * 1.08)
    ax.set_ylim(-0.5, 0.75)
    ax.set_yticks([])
    ax.set_xlabel("minutes")
    return _png(fig)


@dataclass
class Curves:
    """One trained model's log (a card's ``curves``), shifted by the minutes of the stages before it."""

    name: str
    curves: dict
    offset_minutes: float = 0.0


@_default_style
def learning_curves(title: str, models: list[Curves]) -> bytes:
    """Training and validation loss, pseudo-Dice per class and learning rate against minutes of the fold."""
    fig = _figure(11, 3.0, layout=None)  # fixed margins: a layout engine would measure every label first
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.9, wspace=0.2)
    loss, dice, lr = fig.subplots(1, 3)
    styles = ["-", "--", ":"]
    for k, model in enumerate(models):
        c = model.curves
        minutes = np.asarray(c["minutes"], dtype=float) + model.offset_minutes
        prefix = f"{model.name}: " if model.name else ""
        style = styles[k % len(styles)] + ("o" if len(minutes) <= 30 else "")  # few epochs: show each one
        loss.plot(minutes, _floats(c["train_loss"]), style, color="#1f77b4", label=f"{prefix}training", markersize=3)
        loss.plot(minutes, _floats(c["val_loss"]), style, color="#d62728", label=f"{prefix}validation", markersize=3)
        for i, (name, values) in enumerate(c["pseudo_dice"].items()):
            dice.plot(minutes, _floats(values), style, color=FOLD_COLOURS[i % len(FOLD_COLOURS)],
                      label=f"{prefix}{name}", markersize=3)
        lr.plot(minutes, _floats(c["lr"]), style, color="#444444", label=prefix.rstrip(": ") or None,
                markersize=3)
    loss.set_title(f"{title}: loss")
    dice.set_title("pseudo-Dice per label (validation patches)")
    dice.set_ylim(0, 1)
    lr.set_title("learning rate")
    for ax in (loss, dice, lr):
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
    loss.legend(fontsize=7)
    dice.legend(fontsize=7)
    if len(models) > 1:
        lr.legend(fontsize=7)
    return _png(fig)


@_default_style
def scores(folds: dict[str, dict[str, float | None]], metric: str, mean: dict[str, float | None]) -> bytes:
    """Grouped bars: ``metric`` per label (groups) for each fold and their mean, as the table shows them."""
    names = list(mean)
    series = [(f"fold {f}", v) for f, v in folds.items()] + [("mean", mean)]
    fig = _figure(max(4.0, 1.4 + 1.2 * len(names) * len(series) / 3), 2.8)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for j, (label, values) in enumerate(series):
        heights = [np.nan if values.get(n) is None else values[n] for n in names]
        colour = "#333333" if label == "mean" else FOLD_COLOURS[j % len(FOLD_COLOURS)]
        ax.bar(np.arange(len(names)) + (j - (len(series) - 1) / 2) * width, heights, width, label=label,
               color=colour)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel(metric)
    if metric == "Dice":
        ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=min(len(series), 6))
    return _png(fig)


def _floats(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)
