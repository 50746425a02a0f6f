"""Ingest cost against nnU-Net's own planning and preprocessing, same data, same machine, one run.

Ours: discovery + reading and checking every file + conversion to nnU-Net raw.
nnU-Net: fingerprint extraction, experiment planning and preprocessing of its default configurations,
through its Python API, on the dataset we converted.

    python3 bench/ingest_vs_preprocess.py --data ../shared/data/hippocampus [--processes 2]
    python3 bench/ingest_vs_preprocess.py --dicom [FOLDER]   # the same cases as DICOM series

``--dicom`` ingests the DICOM form of the data instead: ``images/CASE/`` one MR series per case (one file per
slice, files shuffled and named at random, float cases stored as int16 with a rescale slope) and the labels as
NIfTI, built once into FOLDER (default: a folder under the system's temporary directory, reused by later runs;
building is not timed). nnU-Net then plans and preprocesses what our conversion wrote, as for the NIfTI form.

Not part of the test suite. The work folder is a temporary directory, removed at the end.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseg_auto.ingest import IngestOptions, check_dataset, convert  # noqa: E402
from medseg_auto.workspace import Workspace  # noqa: E402


DICOM_TARGET = 10.0  # per cent of nnU-Net's plan and preprocess (issue 24)
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_series(image, folder: Path, seed: int) -> None:
    """``image`` (SimpleITK) as an MR series, one file per slice along its third axis, in random order and under
    random names; integer volumes stored as they are, others as int16 with a rescale slope."""
    import numpy as np
    import SimpleITK as sitk
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    integer = bool(np.all(array == np.rint(array))) and np.abs(array).max() < 2 ** 15
    slope = 1.0 if integer else max(float(np.abs(array).max()), 1e-6) / 30000
    stored = np.rint(array / slope).astype(np.int16)
    axes = np.array(image.GetDirection()).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing()), np.array(image.GetOrigin())
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    rng = random.Random(seed)
    order = list(range(array.shape[0]))
    rng.shuffle(order)
    for k in order:
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR_STORAGE, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MR_STORAGE, uid, "MR"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = f"Bench^{folder.name}", folder.name, "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "A1", "1"
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "T1 3D", 3, k + 1
        ds.ReferringPhysicianName, ds.Manufacturer = "", "medseg_auto bench"
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * spacing[2] * axes[:, 2]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*axes[:, 0], *axes[:, 1])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", "0"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / (f"{rng.getrandbits(40):010x}" + (".dcm" if k % 2 else "")), enforce_file_format=True)


def dicom_form(data: Path, folder: Path) -> Path:
    """The DICOM form of a paired NIfTI dataset (``images/CASE/`` series, ``labels/CASE.nii.gz``) in
    ``folder``, built unless a finished build is there already."""
    import SimpleITK as sitk

    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "labels").mkdir(parents=True)
    t0 = time.perf_counter()
    for i, image in enumerate(sorted((data / "images").glob("*.nii.gz"))):
        case = image.name[: -len(".nii.gz")]
        write_series(sitk.ReadImage(str(image)), folder / "images" / case, seed=i)
        shutil.copy(data / "labels" / image.name, folder / "labels" / image.name)
    done.write_text(str(data.resolve()))
    print(f"built the DICOM form of {data} in {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hippocampus")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                   help="nnU-Net worker processes for fingerprint and preprocessing (default: all cores)")
    p.add_argument("--configurations", default="2d,3d_fullres", help="nnU-Net configurations to preprocess")
    p.add_argument("--dicom", type=Path, nargs="?", const=Path(tempfile.gettempdir()) / "medseg_bench_dicom",
                   help="ingest the DICOM form of --data (series per case, NIfTI labels), built in this folder")
    args = p.parse_args()
    data = dicom_form(args.data, args.dicom / args.data.name) if args.dicom else args.data
    form = "DICOM series" if args.dicom else "files as given"
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace.create(Path(tmp), args.data.name, data)
        workspace.activate()  # before nnunetv2 is imported: it reads its paths at import time

        t0 = time.perf_counter()
        checked = check_dataset(IngestOptions(data, progress=False))
        t1 = time.perf_counter()
        conversion = convert(checked, workspace, progress=False)
        ours = time.perf_counter() - t0
        print(f"ours: {len(checked.cases)} cases, check {t1 - t0:.2f} s, convert {ours - (t1 - t0):.2f} s "
              f"({conversion.referenced} files used in place, {conversion.written} written)", flush=True)

        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints, plan_experiments, preprocess)

        configs = tuple(c for c in args.configurations.split(",") if c)
        t0 = time.perf_counter()
        extract_fingerprints([workspace.dataset_id], num_processes=args.processes, verbose=False,
                             show_progress_bar=False)
        t1 = time.perf_counter()
        plan_experiments([workspace.dataset_id])
        t2 = time.perf_counter()
        preprocess([workspace.dataset_id], configurations=configs, num_processes=[args.processes] * len(configs),
                   verbose=False)
        t3 = time.perf_counter()
        nnunet = t3 - t0

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import cpu_name

    print(f"\nmachine: {os.cpu_count()} CPU cores, {cpu_name()}; load average {load_start:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    print("\n| step | seconds |\n|---|---|")
    print(f"| medseg_auto ingest of the {form} (discover + check every file + convert) | {ours:.2f} |")
    print(f"| nnU-Net fingerprint | {t1 - t0:.2f} |")
    print(f"| nnU-Net planning | {t2 - t1:.2f} |")
    print(f"| nnU-Net preprocessing ({', '.join(configs)}, {args.processes} processes) | {t3 - t2:.2f} |")
    print(f"| nnU-Net total | {nnunet:.2f} |")
    target = DICOM_TARGET if args.dicom else 5.0
    print(f"\ningest / nnU-Net plan+preprocess = {100 * ours / nnunet:.1f} %  "
          f"(ingest / preprocessing alone = {100 * ours / (t3 - t2):.1f} %; target <= {target:g} %)")


if __name__ == "__main__":
    main()
