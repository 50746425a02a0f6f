"""Learning-rate shapes over the elapsed fraction of a fold's training time (0 at start, 1 when time is up).

nnU-Net's poly schedule is tied to 1000 epochs; a budgeted run needs the rate to reach about zero exactly
when its time runs out, whatever the number of epochs that fits.
"""
from __future__ import annotations

import math
from typing import Callable

SHAPES = ("constant_decay", "poly", "cosine")


def lr_factor(fraction: float, shape: str = "constant_decay", decay_fraction: float = 0.3) -> float:
    """The multiplier of the initial learning rate at ``fraction`` of the time.

    - ``constant_decay``: full rate, then linear to zero over the last ``decay_fraction`` of the time
      (a short run needs its early learning fast; the decay lets the model settle);
    - ``poly``: nnU-Net's ``(1 - f) ** 0.9`` spread over the time instead of 1000 epochs;
    - ``cosine``: half a cosine from 1 to 0.
    """
    f = min(max(fraction, 0.0), 1.0)
    if shape == "constant_decay":
        if not 0.0 < decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
        return min(1.0, (1.0 - f) / decay_fraction)
    if shape == "poly":
        return (1.0 - f) ** 0.9
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * f))
    raise ValueError(f"unknown learning-rate shape '{shape}': use one of {', '.join(SHAPES)}")


class ElapsedFractionLR:
    """Drop-in for nnU-Net's ``PolyLRScheduler``: ``step()`` sets the rate from the clock, not the epoch.

    nnU-Net calls ``step(epoch)`` once per epoch; the trainer also calls it before every iteration so the
    rate follows the clock smoothly when epochs are few. The fraction never goes back: when the estimate
    of the time left for training grows (the validation reserve is re-estimated), the rate holds.
    """

    def __init__(self, optimizer, initial_lr: float, fraction: Callable[[], float],
                 shape: str = "constant_decay", decay_fraction: float = 0.3):
        lr_factor(0.0, shape, decay_fraction)  # validate the settings now, not mid-training
        self.optimizer = optimizer
        self.initial_lr = initial_lr
        self.fraction = fraction
        self.shape = shape
        self.decay_fraction = decay_fraction
        self.reached = 0.0

    def step(self, epoch: int | None = None) -> float:
        self.reached = max(self.reached, self.fraction())
        lr = self.initial_lr * lr_factor(self.reached, self.shape, self.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
