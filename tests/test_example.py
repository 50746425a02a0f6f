"""The embedded example dataset (``exe_train.py --example``): deterministic, well-formed, accepted by the
ingest as it is, and never written over anyone's files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import read_record, tree_digest, verify_with_nnunet
from medseg_auto.errors import InputError
from medseg_auto.example import CHANNELS, EXAMPLE_NAME, LABELS, MARKER, SHAPE, SPACING, write_example_dataset


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted(folder.rglob("*.nii.gz"))}


def test_same_seed_same_voxels(tmp_path):
    a = write_example_dataset(tmp_path / "a", n_cases=3, seed=7)
    b = write_example_dataset(tmp_path / "b", n_cases=3, seed=7)
    c = write_example_dataset(tmp_path / "c", n_cases=2, seed=8)
    assert a == tmp_path / "a"
    first, second = _arrays(a), _arrays(b)
    assert len(first) == 3 * 3 and first.keys() == second.keys()
    for name in first:
        assert first[name].dtype == second[name].dtype
        assert first[name].tobytes() == second[name].tobytes(), name
    assert tree_digest(a) == tree_digest(b)  # the files too, not only the voxels
    other = _arrays(c)
    assert not np.array_equal(other["case_000/case_000_t1.nii.gz"], first["case_000/case_000_t1.nii.gz"])
    # A case depends on (seed, index) only: fewer cases are a prefix of more.
    d = write_example_dataset(tmp_path / "d", n_cases=2, seed=7)
    fewer = _arrays(d)
    assert len(fewer) == 2 * 3 and all(np.array_equal(v, first[k]) for k, v in fewer.items())
    # Nothing left beside the outputs (the temporary folders were renamed into place).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]


def test_cases_are_well_formed(tmp_path):
    folder = write_example_dataset(tmp_path / EXAMPLE_NAME, n_cases=16)
    cases = sorted(p for p in folder.iterdir() if p.is_dir())
    assert [p.name for p in cases] == [f"case_{i:03d}" for i in range(16)]
    marker = json.loads((folder / MARKER).read_text())
    assert marker["n_cases"] == 16 and marker["seed"] == 0
    for case in cases:
        files = {f"{case.name}_{key}.nii.gz" for key in (*CHANNELS, "seg")}
        assert {p.name for p in case.iterdir()} == files
        label = sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert label.GetSize() == SHAPE and np.allclose(label.GetSpacing(), SPACING)
        assert any(abs(o) > 1 for o in label.GetOrigin())
        values, counts = np.unique(sitk.GetArrayFromImage(label), return_counts=True)
        assert values.tolist() == [0, *LABELS], case.name  # both labels in every case
        assert counts[1] >= 100 and counts[2] >= 30, case.name
        for key in CHANNELS:
            image = sitk.ReadImage(str(case / f"{case.name}_{key}.nii.gz"))
            assert image.GetPixelID() == sitk.sitkFloat32
            assert image.GetSize() == label.GetSize()
            assert image.GetSpacing() == label.GetSpacing()
            assert image.GetOrigin() == label.GetOrigin()
            assert image.GetDirection() == label.GetDirection()
    # The contrasts the docstring promises, on one case: T1 lesion darker than tissue, core darker still;
    # T2 lesion bright, core between tissue and lesion.
    case = cases[0]
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz")))
    t1, t2 = (sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{case.name}_{k}.nii.gz"))) for k in CHANNELS)
    head = (t1 > 300) & (label == 0)
    assert t1[label == 2].mean() < t1[label == 1].mean() < t1[head].mean()
    assert t2[head].mean() < t2[label == 2].mean() < t2[label == 1].mean()


def _cli_args(project: Path, *args: str) -> list[str]:
    return [*args, "-d", EXAMPLE_NAME, "-l", ",".join(LABELS.values()), "--input-dir", str(project / "input_train"),
            "--work-dir", str(project / "work"), "--output-dir", str(project / "out")]


def test_passes_the_ingest(project, train_cli):
    folder = write_example_dataset(project / "input_train" / EXAMPLE_NAME)
    before = tree_digest(project / "input_train")
    code, out, err = train_cli(*_cli_args(project, "--check"))
    assert code == 0, err
    assert "one folder per case" in out and "16 usable" in out
    assert "Channels   2: 0=T1" in out and "1=T2" in out
    assert "1 lesion, 2 core" in out
    assert "size (x, y, z) min 40x40x32" in out
    assert "48 file(s) used in place, 0 written" in out  # nnU-Net reads every file as it is
    assert "Ignored" not in out  # the marker file is not an image, and hidden
    rec = read_record(project, EXAMPLE_NAME)
    assert rec["layout"] == "per_case" and len(rec["cases"]) == 16
    assert rec["channels"]["nnunet_names"] == ["T1", "T2"]
    assert rec["cases"]["case_000"]["label"] == str(folder / "case_000" / "case_000_seg.nii.gz")
    assert tree_digest(project / "input_train") == before
    verify_with_nnunet(Path(rec["raw_dataset"]))


def test_previous_example_is_reused(tmp_path):
    folder = write_example_dataset(tmp_path / "ex", n_cases=2)
    before = tree_digest(folder)
    stamp = (folder / "case_000" / "case_000_t1.nii.gz").stat().st_mtime_ns
    assert write_example_dataset(folder, n_cases=5, seed=3) == folder  # as it is: not regenerated
    assert tree_digest(folder) == before
    assert (folder / "case_000" / "case_000_t1.nii.gz").stat().st_mtime_ns == stamp


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "ex").mkdir()
    write_example_dataset(tmp_path / "ex", n_cases=1)
    assert (tmp_path / "ex" / MARKER).is_file() and (tmp_path / "ex" / "case_000").is_dir()


@pytest.mark.parametrize("foreign", ["notes.txt", "case_000/case_000_t1.nii.gz"])
def test_foreign_folder_is_refused_and_untouched(tmp_path, foreign):
    folder = tmp_path / "input_train" / EXAMPLE_NAME
    (folder / foreign).parent.mkdir(parents=True)
    (folder / foreign).write_text("someone else's file")
    before = tree_digest(tmp_path)
    with pytest.raises(InputError, match="not empty") as caught:
        write_example_dataset(folder)
    assert str(folder) in str(caught.value) and caught.value.exit_code == 2
    assert tree_digest(tmp_path) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == [EXAMPLE_NAME]  # no temporary folder left


def test_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "ex").write_text("a file")
    with pytest.raises(InputError, match="a file of that name"):
        write_example_dataset(tmp_path / "ex")
    assert (tmp_path / "ex").read_text() == "a file"


def test_example_flag_writes_the_dataset_and_chooses_first_run_settings(project, train_cli):
    """``exe_train.py --example`` (here with --check, so nothing is trained): the dataset appears in
    input_train/example, labels are named, and a second call reuses it as it is."""
    args = ["--example", "--check", "--input-dir", str(project / "input_train"), "--work-dir",
            str(project / "work"), "--output-dir", str(project / "out")]
    code, out, err = train_cli(*args)
    assert code == 0, err
    assert "16 usable" in out and "1 lesion, 2 core" in out and "Channels   2" in out
    before = tree_digest(project / "input_train")
    assert train_cli(*args)[0] == 0
    assert tree_digest(project / "input_train") == before
    assert read_record(project, EXAMPLE_NAME)["identity"]["folds"] == ["0"]  # -f 0 for a first run
    code, _, err = train_cli("--example", "-d", "other", "--check")
    assert code == 2 and "leave out -d other" in err
