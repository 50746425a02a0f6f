"""The bundle's manifest (medseg_auto.json) as a typed record: the format exports write today reads back
field for field and writes back byte for byte; older manifests load with defaults for later fields; a
missing or mistyped field is refused with the file and the field named (exit 2), never a KeyError."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.errors import InputError
from medseg_auto.manifest import MANIFEST, BundleManifest, ChannelsRecord, LabelsRecord, StageRecord
from medseg_auto.predict.bundle import Bundle, open_bundle
from medseg_auto.predict.dicom_seg import model_segments
from medseg_auto.workspace import write_json_atomic


def _current() -> dict:
    """A manifest exactly as run.py's ``_Run._export`` writes it (a cascade: with ``stages``)."""
    return {"medseg_auto_version": "0.1.0", "name": "Task04", "trainer": "nnUNetTrainerCascade",
            "inference_trainer": "nnUNetTrainer", "predictor": "cascade", "configuration": "3d_fullres",
            "folds": ["0", "1"],
            "channels": {"keys": ["FLAIR", "T1c"], "nnunet_names": ["FLAIR", "T1c"], "colour": []},
            "labels": {"original_to_nnunet": {"0": 0, "1": 1, "2": 2, "4": 3},
                       "nnunet_to_original": {"0": 0, "1": 1, "2": 2, "3": 4},
                       "names": {"1": "edema", "2": "non-enhancing", "3": "enhancing"},
                       "regions": None, "regions_class_order": None},
            "file_ending": ".nii.gz", "is_2d": False,
            "stages": [{"name": "roi", "trainer": "nnUNetTrainerRoi", "configuration": "3d_lowres_roi",
                        "share": 0.25}]}


def bundle_in_memory(keys: list[str], names: list[str], labels: dict, is_2d: bool = False,
                     folds: tuple[str, ...] = ("0",), folder: Path = Path(".")) -> Bundle:
    """A bundle without files, for tests of prediction's parts: the channels and labels (dict form) given."""
    manifest = BundleManifest(medseg_auto_version="test", name="test", trainer="nnUNetTrainer",
                              inference_trainer="nnUNetTrainer", configuration="3d_fullres", folds=folds,
                              channels=ChannelsRecord(tuple(keys), tuple(names)),
                              labels=LabelsRecord.from_dict(labels), file_ending=".nii.gz", is_2d=is_2d)
    return Bundle(folder, manifest, list(folds))


def _bundle_folder(tmp_path: Path, manifest: dict) -> Path:
    folder = tmp_path / "output_models" / "Task04"
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    write_json_atomic(folder / MANIFEST, manifest)
    return folder


def test_current_format_reads_into_typed_fields():
    m = BundleManifest.from_dict(_current())
    assert m.predictor == "cascade" and m.folds == ("0", "1") and m.is_2d is False
    assert m.channels == ChannelsRecord(("FLAIR", "T1c"), ("FLAIR", "T1c"), ())
    assert m.labels.original_to_nnunet == {0: 0, 1: 1, 2: 2, 4: 3}
    assert m.labels.nnunet_to_original == {0: 0, 1: 1, 2: 2, 3: 4}
    assert m.labels.names == {1: "edema", 2: "non-enhancing", 3: "enhancing"} and m.labels.regions is None
    assert m.stages == (StageRecord("roi", "nnUNetTrainerRoi", "3d_lowres_roi", 0.25),)


def test_round_trip_writes_the_same_bytes(tmp_path):
    """Existing bundles keep working and new ones stay readable by older readers: same keys, same order."""
    for data in (_current(), {k: v for k, v in _current().items() if k != "stages"}):
        before = tmp_path / "before.json"
        write_json_atomic(before, data)
        m = BundleManifest.read(before)
        m.write(tmp_path / "after.json")
        assert (tmp_path / "after.json").read_bytes() == before.read_bytes()
        assert BundleManifest.from_json(m.to_json()) == m


def test_regions_round_trip():
    data = _current()
    data["labels"] = {"original_to_nnunet": {"0": 0, "1": 1, "2": 2, "3": 3},
                      "nnunet_to_original": {"0": 0, "1": 1, "2": 2, "3": 3},
                      "names": {"1": "label_1", "2": "label_2", "3": "label_3"},
                      "regions": [{"name": "whole", "labels": [1, 2, 3]}, {"name": "core", "labels": [2, 3]}],
                      "regions_class_order": [1, 2]}
    m = BundleManifest.from_dict(data)
    assert [(r.name, r.labels) for r in m.labels.regions] == [("whole", (1, 2, 3)), ("core", (2, 3))]
    assert m.labels.regions_class_order == (1, 2)
    assert m.to_dict() == data


def test_older_manifest_gets_defaults():
    """Before the cascade (no ``predictor``) and colour images (no ``channels.colour``)."""
    data = _current()
    del data["predictor"], data["stages"], data["channels"]["colour"]
    del data["labels"]["regions"], data["labels"]["regions_class_order"]
    m = BundleManifest.from_dict(data)
    assert m.predictor == "sliding_window" and m.stages is None and m.channels.colour == ()
    assert m.labels.regions is None and m.labels.regions_class_order is None
    rgb = ChannelsRecord.from_dict({"keys": [], "nnunet_names": ["R", "G", "B"]})
    assert rgb.colour == ("",)  # one colour file per case, as older readers inferred


def test_bundle_reads_through_attributes(tmp_path):
    bundle = open_bundle(_bundle_folder(tmp_path, _current()))
    assert bundle.folds == ["0"] and bundle.manifest.name == "Task04"  # fold 1 has no checkpoint
    assert [(c.key, c.names) for c in bundle.channels] == [("FLAIR", ("FLAIR",)), ("T1c", ("T1c",))]
    assert [(c.name, c.values) for c in bundle.classes] == [("edema", (1,)), ("non-enhancing", (2,)),
                                                            ("enhancing", (3,))]
    assert bundle.to_original(np.array([0, 1, 2, 3])).tolist() == [0, 1, 2, 4]
    assert bundle.to_nnunet(np.array([0, 4, 9]))[0].tolist() == [0, 3, 0]
    assert model_segments(bundle)[-1] == ("enhancing", (4,))


def test_missing_field_is_refused_naming_the_file(tmp_path, capsys):
    data = _current()
    del data["channels"]
    folder = _bundle_folder(tmp_path, data)
    with pytest.raises(InputError) as e:
        open_bundle(folder)
    message = str(e.value)
    assert str(folder / MANIFEST) in message and "field 'channels' missing" in message
    assert "re-export it" in message and "KeyError" not in message

    nested = _current()
    del nested["labels"]["original_to_nnunet"]
    with pytest.raises(InputError, match=r"x\.json: field 'labels\.original_to_nnunet' missing"):
        BundleManifest.from_dict(nested, "x.json")

    from medseg_auto.cli.predict import main as predict_main  # the CLI: exit 2, the message, no traceback
    code = predict_main(["-m", str(folder), "-i", str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "field 'channels' missing" in err and "Traceback" not in err


@pytest.mark.parametrize("path, value, expected", [
    (("is_2d",), "no", "field 'is_2d' should be true or false, not \"no\""),
    (("folds",), "0", "field 'folds' should be a list of fold names"),
    (("channels",), ["FLAIR"], "field 'channels' should be a JSON object"),
    (("channels", "nnunet_names"), ["FLAIR", 2], "field 'channels.nnunet_names' should be a list of strings"),
    (("labels", "names"), {"one": "edema"}, "field 'labels.names' should be an object keyed by integer"),
    (("labels", "nnunet_to_original"), {"1": "4"}, "field 'labels.nnunet_to_original' should be an object of "
                                                   "integer label values"),
    (("stages",), [{"name": "roi"}], "field 'stages[0].trainer' missing"),
])
def test_wrong_type_is_refused(path, value, expected):
    data = _current()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(InputError) as e:
        BundleManifest.from_dict(data, "output_models/Task04/medseg_auto.json")
    assert str(e.value).startswith("output_models/Task04/medseg_auto.json: ") and expected in str(e.value)


def test_not_an_object_and_not_json(tmp_path):
    with pytest.raises(InputError, match="the manifest should be a JSON object"):
        BundleManifest.from_dict([1, 2], "m.json")
    bad = tmp_path / MANIFEST
    bad.write_text('{"name": ')
    with pytest.raises(InputError, match="is not valid JSON"):
        BundleManifest.read(bad)


def test_other_version_is_named():
    data = _current()
    data["medseg_auto_version"] = "0.0.1"
    del data["file_ending"]
    with pytest.raises(InputError, match=r"written by medseg_auto 0\.0\.1; this is "):
        BundleManifest.from_dict(data)


def test_in_memory_bundle_from_records():
    """Built in code (as export does): the typed records, serialised to the same dict."""
    data = _current()
    labels = LabelsRecord.from_dict(copy.deepcopy(data["labels"]))
    m = BundleManifest(medseg_auto_version="0.1.0", name="Task04", trainer="nnUNetTrainerCascade",
                       inference_trainer="nnUNetTrainer", predictor="cascade", configuration="3d_fullres",
                       folds=("0", "1"), channels=ChannelsRecord(("FLAIR", "T1c"), ("FLAIR", "T1c")),
                       labels=labels, file_ending=".nii.gz", is_2d=False,
                       stages=(StageRecord("roi", "nnUNetTrainerRoi", "3d_lowres_roi", 0.25),))
    assert m.to_dict() == data and json.loads(m.to_json()) == data
    assert Bundle(Path("."), m, ["0"]).is_2d is False
