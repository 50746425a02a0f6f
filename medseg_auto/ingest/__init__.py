"""Ingest: find the cases of a dataset in any accepted layout, check them all, convert to nnU-Net raw.

Stages, one module each: :mod:`.layout` (discovery), :mod:`.scan` (read every file once),
:mod:`.checks` and :mod:`.labels` (problems and label mapping), :mod:`.convert` (nnU-Net raw);
:mod:`.pipeline` runs them in order.
"""
from medseg_auto.ingest.pipeline import CheckedDataset, DataProblems, IngestOptions, check_dataset, convert

__all__ = ["CheckedDataset", "DataProblems", "IngestOptions", "check_dataset", "convert"]
