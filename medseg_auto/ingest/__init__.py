"""Ingest: find the cases of a dataset in any accepted layout, check them all, convert to nnU-Net raw.

Stages, one module each: :mod:`.layout` (discovery, with :mod:`.dataset_json` for a dataset.json and
:mod:`.label_folders` where several folders could hold the labels), :mod:`.scan` (read every file once),
:mod:`.checks` and :mod:`.labels` (problems and label mapping), :mod:`.convert` (nnU-Net raw);
:mod:`.pipeline` runs them in order.
"""
from medseg_auto.ingest.pipeline import CheckedDataset, DataProblems, IngestOptions, check_dataset, convert

__all__ = ["CheckedDataset", "DataProblems", "IngestOptions", "check_dataset", "convert"]
