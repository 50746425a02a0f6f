#!/usr/bin/env python3
"""Train a segmentation model: a thin shim over medseg_auto.cli.train (see README.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medseg_auto.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(root=Path(__file__).resolve().parent))
