"""Predict: segment new scans with an exported model bundle.

Stages, one module each: :mod:`.bundle` (what the model needs and how labels map back), :mod:`.scans`
(find the scans, match channels, check headers), :mod:`.engine` (nnU-Net's predictor on one scan),
:mod:`.outputs` (files in the scan's own format and geometry, CSVs); :mod:`.pipeline` runs them in order.
"""
from medseg_auto.predict.engine import Settings
from medseg_auto.predict.pipeline import PredictOptions, PredictSummary, predict

__all__ = ["PredictOptions", "PredictSummary", "Settings", "predict"]
