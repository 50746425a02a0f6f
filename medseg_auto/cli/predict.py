"""``exe_predict.py`` / ``medseg-predict``: segment new scans with an exported model bundle.

Prediction lands with the model bundle (training export); until then this command only says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medseg_auto import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exe_predict.py", description="Segment new scans with a trained model.")
    p.add_argument("-m", dest="model", type=Path, required=True, help="model bundle (output_models/NAME)")
    p.add_argument("-i", dest="scans", type=Path, required=True, help="a scan, or a folder of scans")
    p.add_argument("-o", dest="output", type=Path, required=True, help="output folder")
    p.add_argument("--version", action="version", version=f"medseg_auto {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("Prediction is not available in this version of medseg_auto yet: training cannot export a model "
          "bundle so far. Nothing was read or written.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
