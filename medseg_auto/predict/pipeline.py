"""Prediction as one call: open the bundle, find and check the scans, refuse a bad output folder, then
segment every scan (reading the next one and writing the last one while the network runs), map labels
back, write ``volumes.csv`` and, with reference labels, ``metrics.csv``.

Nothing is written before every scan's header has passed the checks; the input is only ever read.
"""
from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_auto.budget import fmt_duration
from medseg_auto.errors import InputError
from medseg_auto.ingest.formats import PLANAR_ENDINGS, read_image
from medseg_auto.ingest.problems import Problem, format_table
from medseg_auto.metrics import evaluate, nanmean
from medseg_auto.predict.bundle import Bundle, open_bundle
from medseg_auto.predict.engine import CaseError, ScanImage, Settings, case_predictor, read_scan
from medseg_auto.predict.outputs import (METRICS_CSV, OUTPUT_FORMATS, VOLUMES_CSV, Segments, prepare_output,
                                         volume_row, write_csv, write_probabilities, write_segmentation)
from medseg_auto.predict.preview import FOLDER as PREVIEW_FOLDER
from medseg_auto.predict.scans import Scan, find_references, find_scans


@dataclass
class PredictOptions:
    model: Path
    scans: Path
    output: Path
    folds: list[str] | None = None
    device: str = "auto"
    settings: Settings = field(default_factory=Settings)
    labels_dir: Path | None = None
    ending: str | None = None
    overwrite: bool = False
    progress: bool = True
    preview: bool = False        # also preview/NAME.png per scan and preview/index.html
    series: str | None = None    # DICOM: the series (UID or description) to read where a folder holds several
    output_format: str = "auto"  # "dicom-seg": a DICOM-SEG per DICOM series scan (else NIfTI)


@dataclass
class PredictSummary:
    outputs: list[Path]
    load_seconds: float
    predict_seconds: float
    failed: list[Problem]
    metrics: dict[str, dict[str, float]] | None = None  # class -> mean dice / hd95 over scored scans

    @property
    def seconds_per_scan(self) -> float:
        return self.predict_seconds / max(1, len(self.outputs))


class ScansFailed(InputError):
    """Some scans could not be read when their turn came; the others were written."""


def predict(opts: PredictOptions) -> PredictSummary:
    """Segment every scan of ``opts.scans`` with the bundle ``opts.model`` into ``opts.output``."""
    if opts.output_format not in OUTPUT_FORMATS:
        raise InputError(f"--output-format {opts.output_format}: use one of {', '.join(OUTPUT_FORMATS)}")
    bundle = open_bundle(opts.model, opts.folds)
    segments = None
    if opts.output_format == "dicom-seg":
        from medseg_auto.predict.dicom_seg import model_segments

        segments = model_segments(bundle)
    found = find_scans(opts.scans, bundle, opts.ending, opts.series)
    references = find_references(opts.labels_dir, found.scans) if opts.labels_dir else {}
    outputs = prepare_output(opts.output, found.scans, opts.scans, opts.overwrite, segments)
    _print_plan(bundle, found, references, opts)

    from medseg_auto.device import select_device

    start = time.perf_counter()
    # nnU-Net caps its torch threads at this while predicting (its default, 8, is read on import)
    os.environ.setdefault("nnUNet_def_n_proc", str(os.cpu_count() or 1))
    device = select_device(opts.device)
    predictor = case_predictor(bundle, opts.settings, device)
    load_seconds = time.perf_counter() - start
    print(f"Model loaded on {device.type} in {load_seconds:.1f} s.", file=sys.stderr)
    run = _Run(bundle, predictor, opts, references, segments)
    written = run.all(found.scans, outputs)
    predict_seconds = time.perf_counter() - start - load_seconds
    classes = [c.name for c in bundle.classes]
    write_csv(opts.output / VOLUMES_CSV, run.volumes)
    if opts.preview and run.previews:
        from medseg_auto.predict.preview import write_index

        index = write_index(opts.output / PREVIEW_FOLDER, run.previews, opts.model, bool(references))
        print(f"Previews: {index}", file=sys.stderr)
    means = None
    if run.metrics:
        rows = run.metrics + [_mean_row(run.metrics, classes)]
        write_csv(opts.output / METRICS_CSV, rows)
        means = {c: {"dice": rows[-1][f"{c}_dice"], "hd95": rows[-1][f"{c}_hd95"]} for c in classes}
    summary = PredictSummary(written, load_seconds, predict_seconds, run.failed, means)
    _print_summary(summary, opts, len(run.metrics), "pixels" if bundle.manifest.file_ending in PLANAR_ENDINGS else "mm")
    if run.failed:
        raise ScansFailed(f"{format_table(run.failed)}\n\n{len(run.failed)} scan(s) could not be segmented; the "
                          f"other {len(written)} were written to {opts.output}.")
    return summary


class _Run:
    """The loop over scans: read ahead, predict, write behind, one progress bar with an ETA."""

    def __init__(self, bundle: Bundle, predictor, opts: PredictOptions, references: dict[str, Path],
                 segments: Segments | None = None):
        self.bundle, self.predictor, self.opts, self.references = bundle, predictor, opts, references
        self.segments = segments  # DICOM-SEG outputs: the model's segments
        self.volumes: list[dict] = []
        self.metrics: list[dict] = []
        self.failed: list[Problem] = []
        self.previews: list = []  # preview.Preview per scan with --preview

    def all(self, scans: list[Scan], outputs: list[Path]) -> list[Path]:
        from tqdm import tqdm

        written: list[Path] = []
        live = self.opts.progress and sys.stderr.isatty()
        bar = tqdm(total=len(scans), unit="scan", file=sys.stderr, disable=not live, mininterval=0.5,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total} scans [{elapsed}<{remaining}]{postfix}")
        start = time.perf_counter()
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
            ahead: Future = reader.submit(read_scan, scans[0], self.bundle, self.opts.series)
            pending: Future | None = None
            for i, (scan, output) in enumerate(zip(scans, outputs)):
                bar.set_postfix_str(scan.name)
                try:
                    image: ScanImage | None = ahead.result()
                except CaseError as e:
                    image = None
                    self.failed.append(e.problem)
                if i + 1 < len(scans):
                    ahead = reader.submit(read_scan, scans[i + 1], self.bundle, self.opts.series)
                if image is not None:
                    prediction = self.predictor.predict(image, bar.update)
                    if pending is not None:
                        written.append(pending.result())
                    pending = writer.submit(self._write, scan, output, prediction)
                bar.update(i + 1 - bar.n)  # the window ticks' fractions, rounded to whole scans
                if self.opts.progress and not live:
                    elapsed = time.perf_counter() - start
                    eta = elapsed / (i + 1) * (len(scans) - i - 1)
                    print(f"[{i + 1}/{len(scans)}] {scan.name} ({fmt_duration(elapsed)} elapsed, ETA "
                          f"{fmt_duration(eta)})", file=sys.stderr, flush=True)
            if pending is not None:
                written.append(pending.result())
        bar.close()
        return written

    def _write(self, scan: Scan, output: Path, prediction) -> Path:
        segmentation = np.asarray(prediction.segmentation)
        if self.bundle.is_2d:
            segmentation = segmentation.reshape(scan.header.shape)
        path = write_segmentation(self.bundle.to_original(segmentation), output, scan, self.segments,
                                  self.opts.series)
        if prediction.probabilities is not None:
            probabilities = prediction.probabilities.reshape(-1, *scan.header.shape)  # 2D: no dummy axis
            write_probabilities(probabilities, output.parent / f"{scan.name}_probabilities.npz", self._class_names())
        self.volumes.append(volume_row(scan.name, path, segmentation, self.bundle.classes, scan.header,
                                       self.bundle.is_2d))
        if scan.name in self.references:
            self.metrics.append(self._score(scan, segmentation))
        if self.opts.preview:  # in the writer thread: drawn while the network segments the next scan
            from medseg_auto.predict.preview import write_preview

            try:
                self.previews.append(write_preview(self.opts.output / PREVIEW_FOLDER, self.bundle, scan.name,
                                                   scan.files[0], path, self.references.get(scan.name),
                                                   scan.volumes[0] if scan.volumes else None, self.opts.series))
            except Exception as e:  # a picture must not cost the segmentations
                print(f"  --preview: no picture for {scan.name} ({type(e).__name__}: {e}); its segmentation "
                      f"is written", file=sys.stderr)
        return path

    def _class_names(self) -> list[str]:
        regions = self.bundle.manifest.labels.regions
        if regions:
            return [r.name for r in regions]
        return ["background", *(c.name for c in self.bundle.classes)]

    def _score(self, scan: Scan, segmentation: np.ndarray) -> dict:
        reference = read_image(self.references[scan.name]).array
        if reference.ndim == segmentation.ndim + 1:  # a colour-saved 2D mask
            reference = reference[..., 0]
        reference, unknown = self.bundle.to_nnunet(reference)
        if unknown:
            print(f"  {scan.name}: reference value(s) {unknown} are not labels of the model; counted as "
                  f"background", file=sys.stderr)
        spacing = tuple(reversed(scan.header.spacing))
        scores = evaluate(segmentation, reference, [(c.name, c.values) for c in self.bundle.classes], spacing)
        row: dict = {"case": scan.name}
        for name, s in scores.items():
            row[f"{name}_dice"] = _round(s["dice"])
            row[f"{name}_hd95"] = _round(s["hd95"])
        return row


def _mean_row(rows: list[dict], classes: list[str]) -> dict:
    mean: dict = {"case": "mean"}
    for c in classes:
        for m in ("dice", "hd95"):
            mean[f"{c}_{m}"] = _round(nanmean(r[f"{c}_{m}"] for r in rows))
    return mean


def _round(v: float) -> float:
    return v if math.isnan(v) else round(v, 4)


def _print_plan(bundle: Bundle, found, references: dict, opts: PredictOptions) -> None:
    s = opts.settings
    mode = ("fast: " if not s.mirroring and s.step_size > 0.5 else "") + \
           f"mirroring {'on' if s.mirroring else 'off'}, step {s.step_size:g}"
    print(f"Model      {bundle.folder} ({bundle.manifest.trainer}, {bundle.manifest.configuration}, "
          f"fold(s) {', '.join(bundle.folds)})", file=sys.stderr)
    print(f"Channels   {', '.join(c.display for c in bundle.channels)}", file=sys.stderr)
    print(f"Scans      {len(found.scans)} in {found.root}"
          + (f" ({len(found.ignored)} label or mask file(s) left out)" if found.ignored else ""), file=sys.stderr)
    if references:
        print(f"References {len(references)} of {len(found.scans)} scans have one in {opts.labels_dir}",
              file=sys.stderr)
    print(f"Settings   {mode}" + ("" if s.mirroring is False else "  (on a CPU, --fast is up to 8x faster)"),
          file=sys.stderr)
    print(f"Output     {opts.output}", file=sys.stderr)


def _print_summary(summary: PredictSummary, opts: PredictOptions, scored: int, unit: str) -> None:
    """The closing lines; ``unit`` of HD95: mm, or pixels for a model of 2D pictures (no spacing)."""
    n = len(summary.outputs)
    print(f"\n{n} segmentation(s) written to {opts.output} in {fmt_duration(summary.predict_seconds)} "
          f"({summary.seconds_per_scan:.2f} s per scan; model loading {summary.load_seconds:.1f} s). "
          f"Volumes per label: {opts.output / VOLUMES_CSV}", file=sys.stderr)
    if summary.metrics:
        print(f"Against the reference labels ({scored} scan(s), {opts.output / METRICS_CSV}):", file=sys.stderr)
        for name, m in summary.metrics.items():
            print(f"  {name:<20} Dice {m['dice']:.4f}   HD95 {m['hd95']:.2f} {unit}", file=sys.stderr)
