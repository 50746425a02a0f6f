"""exe_predict.py and nnU-Net's own predictor agree voxel for voxel (the README's claim): the same bundle folder,
fold, step size and mirroring, on held-out real hippocampus scans. nnU-Net reads, preprocesses, predicts and
exports the files itself (``predict_from_files_sequential``: no worker processes to spawn)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import real_data
from medseg_auto.cli.predict import main as predict_main
from medseg_auto.export import CHECKPOINT
from medseg_auto.predict.bundle import open_bundle
from medseg_auto.predict.engine import DEFAULT_STEP, FAST_STEP


@pytest.fixture(scope="module")
def hippo_bundle(trained) -> Path:
    project, done, _, _ = trained
    assert done.returncode == 0, done.stderr[-3000:]
    return project / "output_models" / "hippo"


def held_out_scans(folder: Path, n: int = 2) -> list[Path]:
    """The last ``n`` hippocampus scans (never among the tiny model's training cases)."""
    folder.mkdir(parents=True)
    scans = []
    for image in sorted((real_data("hippocampus") / "images").iterdir())[-n:]:
        (folder / image.name).write_bytes(image.read_bytes())
        scans.append(folder / image.name)
    return scans


def case_name(scan: Path) -> str:
    return scan.name.removesuffix(".nii.gz")


def nnunet_predict(bundle: Path, scans: list[Path], out: Path, step: float, mirroring: bool) -> None:
    """nnU-Net's predictor on the bundle folder, as its own API runs it on a CPU."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    out.mkdir()
    folds = tuple(int(f) for f in open_bundle(bundle).folds)
    predictor.initialize_from_trained_model_folder(str(bundle), use_folds=folds, checkpoint_name=CHECKPOINT)
    predictor.predict_from_files_sequential([[str(s)] for s in scans],
                                            [str(out / case_name(s)) for s in scans],
                                            save_probabilities=True)


def compare(bundle: Path, scans: list[Path], ours: Path, theirs: Path) -> None:
    """Both engines' outputs, scan by scan: the same geometry, the same label in every voxel, the same class
    probabilities (so the agreement means something even where a tiny model's labels are mostly background)."""
    to_original = open_bundle(bundle).to_original
    for scan in scans:
        case = case_name(scan)
        mine, nnunet = sitk.ReadImage(str(ours / scan.name)), sitk.ReadImage(str(theirs / f"{case}.nii.gz"))
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            assert getattr(mine, get)() == pytest.approx(getattr(nnunet, get)(), abs=1e-6), (case, get)
        a, b = sitk.GetArrayFromImage(mine), to_original(sitk.GetArrayFromImage(nnunet))
        assert np.array_equal(a, b), f"{case}: {np.count_nonzero(a != b)} of {a.size} voxels differ"
        p = np.load(ours / f"{case}_probabilities.npz")["probabilities"]
        q = np.load(theirs / f"{case}.npz")["probabilities"]
        assert p.shape == q.shape, case
        np.testing.assert_allclose(p.astype(np.float32), q, atol=2e-3, err_msg=case)  # ours are saved as float16


@pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])
def test_exe_predict_and_nnunets_predictor_agree_voxel_for_voxel(hippo_bundle, tmp_path, capsys, fast):
    scans = held_out_scans(tmp_path / "scans", n=2 if fast else 1)  # mirroring: 8 passes per window
    ours, theirs = tmp_path / "ours", tmp_path / "nnunet"
    code = predict_main([str(a) for a in ("-m", hippo_bundle, "-i", tmp_path / "scans", "-o", ours,
                                          "--save-probabilities", "--quiet", *(["--fast"] if fast else []))])
    assert code == 0, capsys.readouterr().err[-3000:]
    nnunet_predict(hippo_bundle, scans, theirs, FAST_STEP if fast else DEFAULT_STEP, mirroring=not fast)
    compare(hippo_bundle, scans, ours, theirs)
