"""The Medical Segmentation Decathlon form, built from the real data: hippocampus as a 3D one-channel task
(with the macOS ``._*`` copies of the official archives), BraTS FLAIR + T1c stacked into 4D and cropped small
as a two-channel task. --check, a short training and prediction of imagesTs/."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import (clean_env, copy_brats_crops, read_record, real_data, train_command, tree_digest,
                      verify_with_nnunet)
from medseg_auto.cli.predict import main as predict_main

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4080)  # what macOS's tar adds


def make_msd_hippocampus(dest: Path, n: int = 6, n_test: int = 2, json_file: bool = True) -> Path:
    """``n`` training and ``n_test`` test cases of hippocampus in the Decathlon's folders, with a
    ``._*`` copy beside every file, as in the official Task04 archive."""
    src = real_data("hippocampus")
    names = sorted(p.name for p in (src / "images").iterdir())[:n + n_test]
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dest / sub).mkdir(parents=True)
    for name in names[:n]:
        shutil.copy2(src / "images" / name, dest / "imagesTr" / name)
        shutil.copy2(src / "labels" / name, dest / "labelsTr" / name)
        (dest / "imagesTr" / f"._{name}").write_bytes(APPLE_DOUBLE)
        (dest / "labelsTr" / f"._{name}").write_bytes(APPLE_DOUBLE)
    for name in names[n:]:
        shutil.copy2(src / "images" / name, dest / "imagesTs" / name)
    if json_file:
        (dest / "dataset.json").write_text(json.dumps({
            "name": "Hippocampus", "tensorImageSize": "3D", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "numTraining": n, "numTest": n_test,
            "training": [{"image": f"./imagesTr/{m}", "label": f"./labelsTr/{m}"} for m in names[:n]],
            "test": [f"./imagesTs/{m}" for m in names[n:]]}, indent=1))
    return dest


def make_msd_brats(dest: Path, tmp: Path, n: int = 4, n_test: int = 2) -> Path:
    """BraTS crops in the Decathlon form: FLAIR and T1c stacked into one 4D file per case (volume 0 FLAIR,
    1 T1c), the label beside it in labelsTr/ with the same name."""
    crops = copy_brats_crops(tmp / "crops", n + n_test, size=(40, 40, 24))
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (dest / sub).mkdir(parents=True)
    cases = sorted(crops.iterdir())
    for i, case in enumerate(cases):
        flair = nibabel.load(case / "Flair_subtrMeanDivStd.nii.gz")
        t1c = nibabel.load(case / "T1c_subtrMeanDivStd.nii.gz")
        stacked = np.stack([np.asarray(flair.dataobj), np.asarray(t1c.dataobj)], axis=-1).astype(np.float32)
        name = f"BRATS_{i + 1:03d}.nii.gz"
        folder = "imagesTr" if i < n else "imagesTs"
        nibabel.save(nibabel.Nifti1Image(stacked, flair.affine), dest / folder / name)
        if i < n:
            label = nibabel.load(case / "OTMultiClass.nii.gz")
            nibabel.save(nibabel.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine),
                         dest / "labelsTr" / name)
    (dest / "dataset.json").write_text(json.dumps({
        "name": "BRATS", "tensorImageSize": "4D", "modality": {"0": "FLAIR", "1": "T1c"},
        "labels": {"0": "background", "1": "necrosis", "2": "edema", "3": "non-enhancing", "4": "enhancing"},
        "numTraining": n,
        "training": [{"image": f"./imagesTr/BRATS_{i + 1:03d}.nii.gz", "label": f"./labelsTr/BRATS_{i + 1:03d}.nii.gz"}
                     for i in range(n)],
        "test": [f"./imagesTs/BRATS_{i + 1:03d}.nii.gz" for i in range(n, n + n_test)]}))
    return dest


def test_hippocampus_decathlon_check(project, train_cli):
    task = make_msd_hippocampus(project / "input_train" / "Task04_Hippocampus")
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "Task04_Hippocampus", "--check", "-f", "0")
    assert code == 0, err
    assert "Medical Segmentation Decathlon" in out and "6 usable" in out
    assert "Channels   1: 0=MRI" in out
    assert "1 Anterior, 2 Posterior" in out  # names from dataset.json's labels (value -> name)
    assert "Hidden     12 hidden file(s) ignored (12 macOS ._* copies)" in out
    assert "To predict 2 scan(s) in imagesTs/" in out
    rec = read_record(project, "Task04_Hippocampus")
    assert sorted(rec["cases"]) == sorted(f.name[:-7] for f in (task / "imagesTr").glob("h*.nii.gz"))
    raw = Path(rec["raw_dataset"])
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert ds["channel_names"] == {"0": "MRI"}
    assert not any(name in c for c in rec["cases"] for name in ("._", "imagesTs"))
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(raw)


def test_decathlon_without_dataset_json_is_recognised(project, train_cli):
    make_msd_hippocampus(project / "input_train" / "hippo", json_file=False)
    code, out, err = train_cli("-d", "hippo", "--check", "-f", "0", "-l", "anterior,posterior")
    assert code == 0, err
    assert "Medical Segmentation Decathlon" in out and "6 usable" in out
    assert "1 anterior, 2 posterior" in out


def test_labels_flag_overrides_the_declared_names(project, train_cli):
    make_msd_hippocampus(project / "input_train" / "hippo")
    code, out, err = train_cli("-d", "hippo", "--check", "-f", "0", "-l", "head,tail")
    assert code == 0, err
    assert "1 head, 2 tail" in out


def test_brats_4d_is_split_into_channels_in_the_work_folder(project, train_cli, tmp_path):
    task = make_msd_brats(project / "input_train" / "Task01_BrainTumour", tmp_path)
    before = tree_digest(project / "input_train")
    code, out, err = train_cli("-d", "Task01_BrainTumour", "--check", "-f", "full")
    assert code == 0, err
    assert "Channels   2: 0=FLAIR, 1=T1c" in out
    assert "1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing" in out
    rec = read_record(project, "Task01_BrainTumour")
    raw = Path(rec["raw_dataset"])
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "FLAIR", "1": "T1c"}
    four_d = sitk.ReadImage(str(task / "imagesTr" / "BRATS_001.nii.gz"))
    files = ds["dataset"]["BRATS_001"]["images"]
    assert len(files) == 2 and all(str(raw) in f for f in files)  # written in the work folder, never beside
    for i, f in enumerate(files):
        volume = sitk.ReadImage(f)
        assert volume.GetDimension() == 3
        assert np.array_equal(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(four_d)[i])
        assert np.allclose(volume.GetOrigin(), four_d.GetOrigin()[:3])
        assert np.allclose(volume.GetSpacing(), four_d.GetSpacing()[:3])
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(raw)


def test_4d_volume_count_must_match_the_modalities(project, train_cli, tmp_path):
    task = make_msd_brats(project / "input_train" / "brats", tmp_path)
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1c", "2": "T2"}
    (task / "dataset.json").write_text(json.dumps(meta))
    code, out, err = train_cli("-d", "brats", "--check", "-f", "full")
    assert code == 2, out + err
    assert "BRATS_001" in err and "holds 2 volume(s) where dataset.json's \"modality\" names 3" in err


def _predict(*args) -> tuple[int, str]:
    import io
    from contextlib import redirect_stderr

    buffer = io.StringIO()
    with redirect_stderr(buffer):
        code = predict_main([str(a) for a in args] + ["--quiet"])
    return code, buffer.getvalue()


def test_4d_scans_are_matched_to_the_model_channels_by_modality_name(tmp_path):
    """A 4D scan's volumes go to the model's channels by the names of the Decathlon dataset.json above
    imagesTs/ (here in the other order than the model's), else by position; a count that fits neither is
    named."""
    from medseg_auto.predict.scans import ScanProblems, find_scans
    from test_manifest import bundle_in_memory

    labels = {"original_to_nnunet": {"0": 0, "1": 1}, "nnunet_to_original": {"0": 0, "1": 1},
              "names": {"1": "tumour"}, "regions": None, "regions_class_order": None}
    bundle = bundle_in_memory(["FLAIR", "T1c"], ["FLAIR", "T1c"], labels, folds=("all",))
    scans = tmp_path / "Task" / "imagesTs"
    scans.mkdir(parents=True)
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 7, 6, 2), np.float32), np.diag([2.0, 2, 3, 1])), scans / "a.nii.gz")
    (scans / "._a.nii.gz").write_bytes(APPLE_DOUBLE)
    found = find_scans(scans, bundle)
    assert [(s.name, s.volumes, s.header.shape) for s in found.scans] == [("a", [0, 1], (6, 7, 8))]
    (tmp_path / "Task" / "dataset.json").write_text(json.dumps({"modality": {"0": "t1gd", "1": "FLAIR"},
                                                                "labels": {"0": "background", "1": "tumour"}}))
    assert find_scans(scans, bundle).scans[0].volumes == [1, 0]  # FLAIR is volume 1, T1c (t1gd) volume 0
    nibabel.save(nibabel.Nifti1Image(np.zeros((8, 7, 6, 3), np.float32), np.eye(4)), scans / "b.nii.gz")
    with pytest.raises(ScanProblems) as refused:
        find_scans(scans, bundle)
    assert "a 4D image of 3 volume(s) for a model of 2 channels (FLAIR, T1c)" in str(refused.value)


def test_hippocampus_bundle_predicts_decathlon_imagests(trained, tmp_path):
    """The paired-form hippocampus bundle of the training tests segments a Decathlon imagesTs/ folder
    (its ._* copies are no scans): 3D label maps in each scan's geometry."""
    project, done, _, _ = trained
    assert done.returncode == 0, done.stderr[-3000:]
    task = make_msd_hippocampus(tmp_path / "Task04", n=1, n_test=2)
    for f in list((task / "imagesTs").iterdir()):
        (task / "imagesTs" / f"._{f.name}").write_bytes(APPLE_DOUBLE)
    code, err = _predict("-m", project / "output_models" / "hippo", "-i", task / "imagesTs", "-o", tmp_path / "out",
                         "--fast")
    assert code == 0, err
    outs = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert outs == sorted(p.name for p in (task / "imagesTs").glob("h*.nii.gz"))
    for name in outs:
        scan, seg = sitk.ReadImage(str(task / "imagesTs" / name)), sitk.ReadImage(str(tmp_path / "out" / name))
        assert seg.GetSize() == scan.GetSize() and np.allclose(seg.GetOrigin(), scan.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


@pytest.mark.slow
def test_brats_4d_trains_and_predicts_imagests(tmp_path):
    """End to end on the 4D two-channel task: a short training, then imagesTs/ predicted, each 4D scan split
    as in training and a 3D label map written in its geometry. Slow (3 minutes): the default run covers its
    parts without training (the 4D split at conversion, 4D scans matched to channels at prediction, a
    Decathlon imagesTs/ predicted by the shared hippocampus bundle)."""
    project = tmp_path / "project"
    make_msd_brats(project / "input_train" / "brats4d", tmp_path, n=4, n_test=2)
    done = subprocess.run(train_command(project, "brats4d", "-c", "3d_fullres", minutes=3, folds="full"),
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = project / "output_models" / "brats4d"
    manifest = json.loads((bundle / "medseg_auto.json").read_text())
    assert manifest["channels"]["nnunet_names"] == ["FLAIR", "T1c"]
    scans = project / "input_train" / "brats4d" / "imagesTs"
    code, err = _predict("-m", bundle, "-i", scans, "-o", tmp_path / "out", "--fast")
    assert code == 0, err
    for name in ("BRATS_005.nii.gz", "BRATS_006.nii.gz"):
        scan = nibabel.load(scans / name)
        seg = nibabel.load(tmp_path / "out" / name)
        assert seg.shape == scan.shape[:3]
        assert np.allclose(seg.affine, scan.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_hippocampus_decathlon_trains_and_predicts_imagests(tmp_path):
    """The 3D one-channel task end to end in the Decathlon form (the paired form's bundle already predicts
    a Decathlon imagesTs/ above): training from imagesTr/ + labelsTr/ with ._* files, imagesTs/ predicted."""
    project = tmp_path / "project"
    task = make_msd_hippocampus(project / "input_train" / "Task04", n=10, n_test=2)
    done = subprocess.run(train_command(project, "Task04", minutes=4, folds="0"), capture_output=True, text=True,
                          timeout=600, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((project / "output_models" / "Task04" / "medseg_auto.json").read_text())
    assert manifest["labels"]["names"] == {"1": "Anterior", "2": "Posterior"}
    code, err = _predict("-m", project / "output_models" / "Task04", "-i", task / "imagesTs", "-o", tmp_path / "out",
                         "--fast")
    assert code == 0, err
    for f in sorted((task / "imagesTs").glob("h*.nii.gz")):
        seg = sitk.ReadImage(str(tmp_path / "out" / f.name))
        assert seg.GetSize() == sitk.ReadImage(str(f)).GetSize()


def test_decathlon_and_paired_forms_give_nnunet_the_same_dataset(project, train_cli, tmp_path):
    """The same hippocampus cases in the Decathlon form and in paired folders become the same nnU-Net raw
    dataset: the same image and label files, used in place, the same channel and label values (the names
    come from dataset.json). Training and held-out Dice at a budget therefore differ only by run noise."""
    from conftest import copy_hippocampus

    task = make_msd_hippocampus(project / "input_train" / "msd", n=6, n_test=0)
    copy_hippocampus(project / "input_train" / "paired", n=6)
    for name, args in (("msd", ()), ("paired", ("-l", "Anterior,Posterior"))):
        code, out, err = train_cli("-d", name, "--check", "-f", "0", *args)
        assert code == 0, err
    ds = {name: json.loads((Path(read_record(project, name)["raw_dataset"]) / "dataset.json").read_text())
          for name in ("msd", "paired")}
    assert ds["msd"]["labels"] == ds["paired"]["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert ds["msd"]["channel_names"] == ds["paired"]["channel_names"] == {"0": "MRI"}
    assert sorted(ds["msd"]["dataset"]) == sorted(ds["paired"]["dataset"])
    for case, files in ds["msd"]["dataset"].items():
        other = ds["paired"]["dataset"][case]
        for a, b in zip(files["images"] + [files["label"]], other["images"] + [other["label"]]):
            pixels = [sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in (a, b)]
            assert pixels[0].tobytes() == pixels[1].tobytes()
    assert all(str(task) in f for c in ds["msd"]["dataset"].values() for f in c["images"])  # used in place


def test_nnunet_v1_task_folder_with_channel_suffixes(project, train_cli):
    """nnU-Net v1 wrote the Decathlon's dataset.json beside ``_0000`` files: its channels by suffix, named
    by ``modality``."""
    task = make_msd_hippocampus(project / "input_train" / "Task004", n=5, n_test=0)
    for f in list((task / "imagesTr").glob("h*.nii.gz")):
        f.rename(f.with_name(f.name.replace(".nii.gz", "_0000.nii.gz")))
    code, out, err = train_cli("-d", "Task004", "--check", "-f", "0")
    assert code == 0, err
    assert "Medical Segmentation Decathlon" in out and "5 usable" in out and "Channels   1: 0=MRI" in out
    assert "1 Anterior, 2 Posterior" in out
