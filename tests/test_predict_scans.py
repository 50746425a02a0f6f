"""Scan discovery at prediction: what is a scan and what is left out, without a trained model."""
from __future__ import annotations

from conftest import copy_brats_crops
from medseg_auto.predict.scans import find_scans
from test_manifest import bundle_in_memory

LABELS = {"original_to_nnunet": {"0": 0, "1": 1}, "nnunet_to_original": {"0": 0, "1": 1}, "names": {"1": "tumour"},
          "regions": None, "regions_class_order": None}


def test_a_brats_case_folder_leaves_its_label_and_brain_mask_out(tmp_path):
    """-i on one BraTS case folder as published: FLAIR and T1c are the scan; OTMultiClass (a label named by
    the label word alone) and the brain mask are left out and counted, not refused as unknown channels."""
    import shutil

    from conftest import real_data

    case = copy_brats_crops(tmp_path / "brats", 1, size=(16, 16, 8)) / "brats_2013_pat0001_1"
    shutil.copy2(real_data("brats2015_subset") / case.name / "brainmask.nii.gz", case / "brainmask.nii.gz")
    bundle = bundle_in_memory(["FLAIR", "T1c"], ["FLAIR", "T1c"], LABELS, folds=("all",))
    found = find_scans(case, bundle)
    assert [[f.name for f in s.files] for s in found.scans] == [["Flair_subtrMeanDivStd.nii.gz",
                                                                  "T1c_subtrMeanDivStd.nii.gz"]]
    assert sorted(f.name for f in found.ignored) == ["OTMultiClass.nii.gz", "brainmask.nii.gz"]
