"""Multi-stage models: the models a trainer trains on each fold, in order (the cascade: ROI, then crops)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stage:
    """One model of a fold: its trainer, nnU-Net configuration and share of the fold's time. The last stage
    (``name`` empty) is the model the bundle predicts with; earlier ones are exported beside it by name."""

    name: str
    trainer: type
    configuration: str
    share: float

    def record(self) -> dict:
        return {"name": self.name, "trainer": self.trainer.__name__, "configuration": self.configuration,
                "share": round(self.share, 3)}
