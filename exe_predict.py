#!/usr/bin/env python3
"""Segment new scans with an exported model: a thin shim over medseg_auto.cli.predict (see README.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from medseg_auto.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
