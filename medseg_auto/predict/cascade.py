"""The cascade's case predictor: ROI at low resolution, crops around its components, CoordConv segmentation of
each crop, probabilities pasted back.

Both models run through nnU-Net's predictor (preprocessing, sliding window, Gaussian weighting, mirroring,
the bundle's folds averaged) and nnU-Net's resampling back to the scan's geometry; only the choice of
where to look is ours (``medseg_auto.predict.crops``). The two stages share nnU-Net's crop to the non-zero
region, so a mask of the ROI's preprocessed array maps onto the segmentation model's by resizing alone.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from medseg_auto.networks.coordconv import CoordinateFrame, with_coordinates
from medseg_auto.predict.bundle import Bundle
from medseg_auto.predict.crops import box_slices, crop_boxes, crop_margin, paste_back
from medseg_auto.predict.engine import Prediction, ScanImage, Settings, SlidingWindow

ROI_SHARE_OF_WORK = 0.2   # of a case's progress bar
MAX_COMPONENTS = 3        # crops: the largest components of the ROI ...
MIN_COMPONENT_SHARE = 0.1  # ... after the largest, each at least this share of its size


class Cascade:
    """Predicts a cascade bundle: its ``roi/`` model folder, then the bundle's own (CoordConv) model."""

    def __init__(self, bundle: Bundle, settings: Settings, device):
        self.roi = SlidingWindow(Bundle(bundle.folder / "roi", bundle.manifest, bundle.folds), settings, device)
        self.segmentation = SlidingWindow(bundle, settings, device)
        self.fallbacks = 0  # cases where the ROI found nothing and the whole volume was segmented

    @classmethod
    def from_models(cls, roi: SlidingWindow, segmentation: SlidingWindow) -> "Cascade":
        """The cascade of two loaded models (the trainer's final validation: the models of one fold)."""
        self = cls.__new__(cls)
        self.roi, self.segmentation, self.fallbacks = roi, segmentation, 0
        return self

    def predict(self, image: ScanImage, progress: Callable[[float], None] | None = None) -> Prediction:
        import torch

        p = self.segmentation.predictor
        data, properties = self.segmentation.preprocess(image)
        shape = data.shape[1:]
        roi = self._roi_mask(image, shape)
        if progress:
            progress(ROI_SHARE_OF_WORK)
        patch = p.configuration_manager.patch_size
        boxes = crop_boxes(roi, patch, crop_margin(patch), MAX_COMPONENTS, MIN_COMPONENT_SHARE)
        if not boxes:
            self.fallbacks += 1
            print("  the ROI model found nothing in this scan: segmenting the whole volume", file=sys.stderr)
            boxes = [tuple((0, n) for n in shape)]
        frame = CoordinateFrame.from_properties(properties, shape)
        label_manager = p.label_manager
        crops = []
        for box in boxes:
            x = with_coordinates(data[(slice(None), *box_slices(box))], frame, box)
            logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(x))
            crops.append(label_manager.apply_inference_nonlin(logits).float().numpy())
            if progress:
                progress((1 - ROI_SHARE_OF_WORK) / len(boxes))
        background = np.zeros(len(crops[0]), np.float32)
        if not label_manager.has_regions:
            background[0] = 1.0  # softmax: background's probability; regions (sigmoid): every region 0
        probabilities = paste_back(crops, boxes, shape, background)
        return self.segmentation.to_prediction(
            torch.from_numpy(_as_logits(probabilities, label_manager.has_regions)), properties)

    def _roi_mask(self, image: ScanImage, shape) -> np.ndarray:
        """The ROI model's foreground on the segmentation model's preprocessed grid."""
        import torch

        r = self.roi.predictor
        data, _ = self.roi.preprocess(image)
        logits = r.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()
        foreground = r.label_manager.apply_inference_nonlin(logits)[-1:]  # the one region: the union of labels
        resized = torch.nn.functional.interpolate(foreground[None], size=tuple(shape), mode="trilinear")
        return resized[0, 0].numpy() > 0.5


def _as_logits(probabilities: np.ndarray, regions: bool) -> np.ndarray:
    """Logits that nnU-Net's inference nonlinearity turns back into ``probabilities`` (softmax of log p,
    sigmoid of log(p / (1 - p)))."""
    p = np.clip(probabilities, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)) if regions else np.log(p)
