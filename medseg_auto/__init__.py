"""medseg_auto: a self-configuring, time-budgeted training tool built on nnU-Net v2."""

__version__ = "0.1.0"
