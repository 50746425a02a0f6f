"""Pictures of slices as PNG bytes, composed as pixels (numpy and Pillow, no plotting library): the report's
overlays of validation cases and the previews of predictions.

Each slice is resampled (nearest neighbour) to square pixels of a fixed size, outlines are the edge pixels of
each label's mask at that size, and the panels are laid out side by side with their titles. Drawing pixels
keeps outlines exact to the voxel and costs milliseconds per case.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from medseg_auto.reporting.views import Plane, Volume, centre_of_structure, cut, display_window, planes

REFERENCE_COLOUR = (0x00, 0xD2, 0x5B)   # green
PREDICTION_COLOUR = (0xFF, 0x2F, 0xB4)  # magenta
FILL_COLOURS = [(0xFF, 0x2F, 0xB4), (0xFF, 0xD6, 0x0A), (0x00, 0xB4, 0xD8), (0xFF, 0x7B, 0x00), (0x9D, 0x4E, 0xDD),
                (0x80, 0xED, 0x99)]
PANEL_3D = 230   # pixels of a 3D slice's longer side
PANEL_2D = 460   # of a 2D image's
GAP, LABEL_WIDTH, HEADER = 6, 170, 22


@dataclass
class OverlayCase:
    """One case to show: its image, reference and prediction in display orientation (same grid), and the
    classes to draw (name, label values)."""

    title: str
    image: Volume
    reference: Volume | None
    prediction: Volume
    classes: list[tuple[str, tuple[int, ...]]]


def overlays(cases: list[OverlayCase]) -> bytes:
    """One row per case: three orthogonal slices through its structure (2D: the image), the reference
    outlined in green and the prediction in magenta, each label's own outline."""
    rows = []
    for case in cases:
        structure = case.reference.array if case.reference is not None and case.reference.array.any() \
            else case.prediction.array
        rows.append((case.title, _panels(case, centre_of_structure(structure > 0), fill=False)))
    return _compose(rows)


def segmentation(case: OverlayCase) -> bytes:
    """The preview of one prediction: labels filled in colour over the slices through the largest structure
    found, the reference (when given) outlined in green."""
    return _compose([(case.title, _panels(case, centre_of_structure(case.prediction.array > 0), fill=True))])


def _panels(case: OverlayCase, centre: tuple[int, ...], fill: bool) -> list[tuple[str, np.ndarray]]:
    lo, hi = display_window(case.image.array)
    longest = PANEL_2D if case.image.is_2d else PANEL_3D
    out = []
    for plane in planes(case.image, centre):
        rows, cols = _grid(cut(case.image.array, plane).shape, plane, longest)
        grey = np.clip((cut(case.image.array, plane)[np.ix_(rows, cols)] - lo) / (hi - lo), 0.0, 1.0)
        rgb = np.repeat((grey * 255.0)[..., None], 3, axis=2)
        if fill:
            labels = cut(case.prediction.array, plane)[np.ix_(rows, cols)]
            for i, (_, values) in enumerate(case.classes):
                mask = np.isin(labels, values)
                rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.asarray(FILL_COLOURS[i % len(FILL_COLOURS)], float)
        else:
            _outline(rgb, cut(case.prediction.array, plane)[np.ix_(rows, cols)], case.classes, PREDICTION_COLOUR)
        if case.reference is not None:
            _outline(rgb, cut(case.reference.array, plane)[np.ix_(rows, cols)], case.classes, REFERENCE_COLOUR)
        out.append(("" if plane.name == "image" else plane.name, rgb.astype(np.uint8)))
    return out


def _grid(shape: tuple[int, int], plane: Plane, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column of each output pixel: square pixels, the longer side ``longest`` pixels."""
    height, width = shape[0] * plane.aspect, float(shape[1])
    scale = longest / max(height, width)
    out_rows, out_cols = max(1, round(height * scale)), max(1, round(width * scale))
    rows = np.minimum(((np.arange(out_rows) + 0.5) * shape[0] / out_rows).astype(int), shape[0] - 1)
    cols = np.minimum(((np.arange(out_cols) + 0.5) * shape[1] / out_cols).astype(int), shape[1] - 1)
    return rows, cols


def _outline(rgb: np.ndarray, labels: np.ndarray, classes: list[tuple[str, tuple[int, ...]]], colour) -> None:
    """Paint the edge pixels of each class's mask (two pixels wide) in ``colour``."""
    from scipy import ndimage

    for _, values in classes:
        mask = np.isin(labels, values)
        if mask.any():
            rgb[mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=1)] = colour


def _compose(rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> bytes:
    """Rows of panels with a title column on the left and the panels' names above the first row."""
    from PIL import Image, ImageDraw

    font = _font()
    heights = [max(p.shape[0] for _, p in panels) for _, panels in rows]
    widths = [[p.shape[1] for _, p in panels] for _, panels in rows]
    columns = [max(w[i] for w in widths if i < len(w)) for i in range(max(len(w) for w in widths))]
    width = LABEL_WIDTH + sum(columns) + GAP * (len(columns) + 1)
    height = HEADER + sum(heights) + GAP * (len(rows) + 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = HEADER + GAP
    for (title, panels), row_height in zip(rows, heights):
        draw.multiline_text((GAP, top + 4), title, fill="black", font=font, spacing=3)
        left = LABEL_WIDTH + GAP
        for i, (name, pixels) in enumerate(panels):
            x = left + (columns[i] - pixels.shape[1]) // 2
            canvas.paste(Image.fromarray(pixels), (x, top + (row_height - pixels.shape[0]) // 2))
            if top == HEADER + GAP and name:
                draw.text((left + columns[i] // 2, HEADER // 2 + 2), name, fill="black", font=font, anchor="mm")
            left += columns[i] + GAP
        top += row_height + GAP
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow before 10.1: its small bitmap font
        return ImageFont.load_default()
