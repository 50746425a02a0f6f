"""The report of a model: ``report.html`` in its bundle, rendered from the model card and the bundle's
files (html.py), with charts drawn by figures.py and slice pictures by pictures.py from volumes oriented by
views.py; validation.py adds curves and per-case scores to the card at export, overlays.py the validation
cases' pictures."""
from __future__ import annotations

from pathlib import Path


def write_report(bundle: Path, card: dict, results_folder: Path | None = None) -> Path:
    """Write ``bundle/report.html``; with the run's nnU-Net ``results_folder`` (at export) also the overlays
    of each fold's validation cases, which later renders of the page reuse."""
    from medseg_auto.reporting.html import write_html
    from medseg_auto.reporting.overlays import write_overlays

    if results_folder is not None:
        write_overlays(bundle, card, results_folder)
    return write_html(bundle, card)
