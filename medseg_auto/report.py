"""Readable reports for people: the dataset summary printed by ``exe_train.py`` (and ``--dry-run``)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from medseg_auto.ingest import CheckedDataset
from medseg_auto.ingest.convert import Conversion
from medseg_auto.ingest.formats import image_ending

LAYOUTS = {
    "nnunet_raw": "nnU-Net raw (imagesTr/ + labelsTr/)",
    "paired": "paired folders (images + labels)",
    "per_case": "one folder per case",
    "flat": "images and labels side by side",
}


def dataset_summary(name: str, checked: CheckedDataset, conversion: Conversion) -> str:
    """What was found and how it was converted, one topic per line."""
    disc = checked.discovery
    infos = [checked.infos[f] for c in checked.cases for f in c.channels.values()]
    shapes = np.array([i.shape for i in infos])
    spacings = np.array([i.spacing for i in infos])
    lines = [
        f"Dataset    {name}  ({disc.root})",
        f"Layout     {LAYOUTS[disc.layout]}",
        f"Cases      {len(checked.cases)} usable" + (f", {len(checked.skipped)} skipped" if checked.skipped else ""),
        f"Channels   {len(conversion.channel_names)}: " + ", ".join(
            f"{i}={n}" + (f" (files '{k}')" if k and k != n else "")
            for i, (n, k) in enumerate(zip(conversion.channel_names, _file_keys(checked, conversion)))),
        "Labels     " + _labels_line(checked),
        f"Images     {'2D' if checked.is_2d else '3D'}, size (x, y{', z' if not checked.is_2d else ''}) "
        f"min {_dims(shapes.min(0))}, median {_dims(np.median(shapes, 0))}, max {_dims(shapes.max(0))}"
        + ("" if checked.is_2d else f"; spacing median {_dims(np.median(spacings, 0), '{:.3g}')} mm"),
    ]
    if disc.ignored:
        counts = Counter(f.name if image_ending(f) else f.suffix or f.name for f in disc.ignored)
        lines.append(f"Ignored    {len(disc.ignored)} file(s) that are neither channel nor label: "
                     + ", ".join(f"{k} x{n}" for k, n in counts.most_common(6)))
    lines.append(f"Converted  {conversion.folder}: {conversion.referenced} file(s) used in place, "
                 f"{conversion.written} written (file ending {conversion.file_ending})")
    lines.append(f"Checked    in {checked.seconds:.1f} s")
    return "\n".join(lines)


def _file_keys(checked: CheckedDataset, conversion: Conversion) -> list[str]:
    """The file-name key of each nnU-Net channel; none where colour images were split into R, G, B."""
    if len(checked.channel_keys) == len(conversion.channel_names):
        return checked.channel_keys
    return [""] * len(conversion.channel_names)


def _labels_line(checked: CheckedDataset) -> str:
    plan = checked.labels
    if plan.regions:
        values = ", ".join(f"{orig}->{new}" for orig, new in sorted(plan.mapping.items()) if orig)
        regions = "; ".join(f"{n} = labels {v}" for n, v in plan.regions)
        return f"values {values}; regions: {regions}"
    parts = []
    for orig, new in sorted(plan.mapping.items()):
        if new:
            name = plan.names.get(new, f"label_{new}")
            parts.append(f"{new} {name}" + (f" (value {orig} in the files)" if orig != new else ""))
    merged = "" if plan.inverse else " (several values merged)"
    return "0 background, " + ", ".join(parts) + merged


def _dims(values, fmt: str = "{:.0f}") -> str:
    return "x".join(fmt.format(v) for v in values[::-1])
