"""The report's pictures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state):
the budget timeline, learning curves against minutes, Dice and HD95 per fold, and image overlays.

Every number drawn comes from the model card given (or, for overlays, from the volumes given).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from medseg_auto.reporting.views import Volume, centre_of_structure, cut, display_window, planes

REFERENCE_COLOUR = "#00d25b"   # green
PREDICTION_COLOUR = "#ff2fb4"  # magenta
DPI = 80
PHASE_COLOURS = {"ingest": "#8c8c8c", "plan": "#5b8def", "export": "#f2a93b"}
FOLD_COLOURS = ["#2a9d8f", "#e76f51", "#6a4c93", "#e9c46a", "#264653", "#f4a261"]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="tight")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


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


def learning_curves(title: str, models: list[Curves]) -> bytes:
    """Training and validation loss, pseudo-Dice per class and learning rate against minutes of the fold."""
    fig = _figure(11, 3.0)
    loss, dice, lr = fig.subplots(1, 3)
    styles = ["-", "--", ":"]
    for k, model in enumerate(models):
        c = model.curves
        minutes = np.asarray(c["minutes"], dtype=float) + model.offset_minutes
        prefix = f"{model.name}: " if model.name else ""
        style = styles[k % len(styles)]
        loss.plot(minutes, _floats(c["train_loss"]), style, color="#1f77b4", label=f"{prefix}training")
        loss.plot(minutes, _floats(c["val_loss"]), style, color="#d62728", label=f"{prefix}validation")
        for i, (name, values) in enumerate(c["pseudo_dice"].items()):
            dice.plot(minutes, _floats(values), style, color=FOLD_COLOURS[i % len(FOLD_COLOURS)],
                      label=f"{prefix}{name}")
        lr.plot(minutes, _floats(c["lr"]), style, color="#444444", label=prefix.rstrip(": ") or None)
    loss.set_title("loss")
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
    fig.suptitle(title, fontsize=10)
    return _png(fig)


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


@dataclass
class OverlayCase:
    """One case to show: its image, reference and prediction in display orientation (same grid), and the
    classes to outline (name, label values)."""

    title: str
    image: Volume
    reference: Volume | None
    prediction: Volume
    classes: list[tuple[str, tuple[int, ...]]]


def overlays(cases: list[OverlayCase]) -> bytes:
    """One row per case: three orthogonal slices through its structure (2D: the image), the reference
    outlined in green and the prediction in magenta, each label's own outline."""
    rows = len(cases)
    columns = 1 if cases[0].image.is_2d else 3
    fig = _figure(3.0 * columns + 0.8, 3.0 * rows)
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False))
    for r, (row, case) in enumerate(zip(axes, cases)):
        structure = case.reference.array if case.reference is not None and case.reference.array.any() \
            else case.prediction.array
        centre = centre_of_structure(structure > 0)
        lo, hi = display_window(case.image.array)
        for c, (ax, plane) in enumerate(zip(row, planes(case.image, centre))):
            ax.imshow(cut(case.image.array, plane), cmap="gray", vmin=lo, vmax=hi, aspect=plane.aspect,
                      interpolation="nearest")
            for volume, colour in ((case.reference, REFERENCE_COLOUR), (case.prediction, PREDICTION_COLOUR)):
                if volume is not None:
                    _outline(ax, cut(volume.array, plane), case.classes, colour)
            if r == 0 and plane.name != "image":
                ax.set_title(plane.name, fontsize=9)
            if c == 0:
                ax.set_ylabel(case.title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


def _outline(ax, labels: np.ndarray, classes: list[tuple[str, tuple[int, ...]]], colour: str) -> None:
    for _, values in classes:
        mask = np.isin(labels, values)
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.1)


def segmentation(case: OverlayCase) -> bytes:
    """The preview of one prediction: labels filled in colour over the slices through the largest
    structure, the reference (when given) outlined in green."""
    from matplotlib.colors import ListedColormap

    columns = 1 if case.image.is_2d else 3
    fig = _figure(3.2 * columns + 0.2, 3.4)
    axes = np.atleast_1d(fig.subplots(1, columns, squeeze=False)[0])
    centre = centre_of_structure(case.prediction.array > 0)
    lo, hi = display_window(case.image.array)
    colours = ListedColormap(["#ff2fb4", "#ffd60a", "#00b4d8", "#ff7b00", "#9d4edd", "#80ed99"])
    for ax, plane in zip(axes, planes(case.image, centre)):
        ax.imshow(cut(case.image.array, plane), cmap="gray", vmin=lo, vmax=hi, aspect=plane.aspect,
                  interpolation="nearest")
        index = np.zeros(cut(case.prediction.array, plane).shape, dtype=float)
        for i, (_, values) in enumerate(case.classes):
            index[np.isin(cut(case.prediction.array, plane), values)] = i + 1
        shown = np.ma.masked_equal(index, 0)
        ax.imshow(shown - 1, cmap=colours, vmin=0, vmax=colours.N - 1, alpha=0.45, aspect=plane.aspect,
                  interpolation="nearest")
        if case.reference is not None:
            _outline(ax, cut(case.reference.array, plane), case.classes, REFERENCE_COLOUR)
        ax.set_title(case.title if plane.name == "image" else f"{case.title}: {plane.name}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def _floats(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)
