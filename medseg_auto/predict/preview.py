"""``exe_predict.py --preview``: a picture of each segmentation, to see at a glance what the model found.

Per scan ``preview/NAME.png``: the labels in colour over three orthogonal slices through the largest
structure found (2D: the image itself), the reference outlined in green where ``--labels-dir`` gives one;
and ``preview/index.html`` showing them all. Image and segmentation are read back from their files and
turned to one anatomical orientation together (reporting.views), so the picture is right whatever the
scan's direction cosines.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_auto.predict.bundle import Bundle

FOLDER = "preview"
INDEX = "index.html"


@dataclass
class Preview:
    name: str
    png: Path
    found: str   # what the segmentation holds, e.g. "anterior 412 voxels, posterior 388 voxels"


def write_preview(folder: Path, bundle: Bundle, name: str, image: Path, segmentation: Path,
                  reference: Path | None = None, volume: int | None = None, series: str | None = None) -> Preview:
    """``folder/NAME.png`` for one scan's written segmentation (dataset values, the scan's geometry). ``image``
    is the scan's first channel: a file, a DICOM series folder (``series`` picks one), or ``volume`` of a 4D
    file."""
    from medseg_auto.reporting.pictures import OverlayCase, segmentation as draw
    from medseg_auto.reporting.views import Volume, read_volume

    scan = read_volume(image, volume=volume, series=series)
    predicted = read_volume(segmentation, label=True)
    predicted = Volume(bundle.to_nnunet(predicted.array)[0], predicted.spacing)
    ref = None
    if reference is not None:
        ref = read_volume(reference, label=True)
        ref = Volume(bundle.to_nnunet(ref.array)[0], ref.spacing) if ref.array.shape == scan.array.shape else None
    classes = [(c.name, c.values) for c in bundle.classes]
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    png.write_bytes(draw(OverlayCase(name, scan, ref, predicted, classes)))
    unit = "pixels" if scan.is_2d else "voxels"
    found = ", ".join(f"{c} {int(np.isin(predicted.array, v).sum())} {unit}" for c, v in classes)
    return Preview(name, png, found)


def write_index(folder: Path, previews: list[Preview], model: Path, references: bool) -> Path:
    """``folder/index.html``: every preview with its scan's name and what was found, linked relatively."""
    legend = ("Labels in colour; the reference outlined in green. " if references else "Labels in colour. ")
    items = "\n".join(f'<figure><figcaption><b>{html.escape(p.name)}</b>: {html.escape(p.found)}</figcaption>'
                      f'<img src="{html.escape(p.png.name)}" alt="{html.escape(p.name)}"></figure>'
                      for p in previews)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Previews: {html.escape(model.name)}</title>
<style>body {{ font-family: Helvetica, Arial, sans-serif; margin: 1em 2em; }} img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}</style></head>
<body><h1>Segmentations by {html.escape(str(model))}</h1>
<p>{len(previews)} scan(s). {legend}Three orthogonal slices through the largest structure found (axial and
coronal with the patient's right on the left); 2D: the image.</p>
{items}
</body></html>
"""
    target = folder / INDEX
    target.write_text(page, encoding="utf-8")
    return target
