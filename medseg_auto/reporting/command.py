"""``medseg-report BUNDLE`` (and ``exe_train.py --report BUNDLE``): write ``report.html`` for a model that is
already exported, older bundles included (what their card lacks, the page says it lacks)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medseg_auto.errors import InputError, MedsegError


def report_for_bundle(bundle: Path) -> Path:
    """Render ``bundle/report.html`` from its model card and files; exit 2 (InputError) for a folder that
    is not an exported model. Overlays written at export (report_files/) are kept and shown."""
    from medseg_auto.reporting import write_report

    card_file = bundle / "model_card.json"
    if not bundle.is_dir():
        raise InputError(f"{bundle}: no such folder. Give a model folder made by exe_train.py "
                         f"(output_models/NAME).")
    if not card_file.is_file():
        raise InputError(f"{bundle}: no model_card.json, so not a model exported by exe_train.py; "
                         f"nothing was written.")
    try:
        card = json.loads(card_file.read_text())
    except ValueError as e:
        raise InputError(f"{bundle}: model_card.json is not valid JSON ({e}); the model folder is "
                         f"damaged. Nothing was written.") from None
    if not isinstance(card, dict) or "folds" not in card:
        raise InputError(f"{bundle}: model_card.json holds no folds; it is not a medseg_auto model "
                         f"card. Nothing was written.")
    return write_report(bundle, card)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medseg-report", description="Write report.html for exported models.")
    p.add_argument("bundles", nargs="+", type=Path, metavar="BUNDLE", help="model folder (output_models/NAME)")
    args = p.parse_args(argv)
    try:
        for bundle in args.bundles:
            print(f"Report written: {report_for_bundle(bundle)}")
    except MedsegError as e:
        print(f"\n{e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
