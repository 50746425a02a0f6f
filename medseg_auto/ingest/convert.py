"""Conversion to nnU-Net's raw format inside the work folder.

nnU-Net's ``dataset.json`` may list each case's files by path (its ``dataset`` key), so a file nnU-Net can
read as it is, is referenced where it lies and never copied. Only what needs a change is written: label
values remapped or made integral, formats nnU-Net cannot read (``.mhd``, JPEG, GIF), colour images split
into one file per channel.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_auto.ingest.formats import (NNUNET_PLANAR_ENDINGS, NNUNET_VOLUME_ENDINGS, ImageData, image_ending,
                                        is_dicom_path, is_planar, read_image, spatial_part, write_volume)
from medseg_auto.ingest.labels import LabelPlan
from medseg_auto.ingest.layout import SourceCase
from medseg_auto.ingest.scan import FileInfo

RGB = ("R", "G", "B")


@dataclass
class Conversion:
    """What the conversion did: where the dataset is, and how many files were referenced or written."""

    folder: Path
    file_ending: str
    channel_names: list[str]
    colour: set[str] = field(default_factory=set)  # channel keys split into R, G and B
    referenced: int = 0
    written: int = 0
    cases: dict[str, dict] = field(default_factory=dict)


def choose_file_ending(files: list[Path], is_2d: bool) -> str:
    """The most common ending if nnU-Net reads it, else ``.png`` (2D) or ``.nii.gz`` (3D)."""
    readable = NNUNET_PLANAR_ENDINGS if is_2d else NNUNET_VOLUME_ENDINGS
    common = Counter(image_ending(f) for f in files).most_common(1)
    if common and common[0][0] in readable:
        return common[0][0]
    return ".png" if is_2d else ".nii.gz"


def colour_channels(cases: list[SourceCase], infos: dict[Path, FileInfo], keys: list[str]) -> set[str]:
    """Channel keys whose images are in colour (in most cases): each becomes three nnU-Net channels."""
    out = set()
    for key in keys:
        colour = sum(1 for c in cases if infos[c.channels[key]].components > 1
                     and not infos[c.channels[key]].grey_rgb)
        if colour * 2 > len(cases):
            out.add(key)
    return out


def convert_dataset(folder: Path, cases: list[SourceCase], infos: dict[Path, FileInfo], keys: list[str],
                    names: list[str], plan: LabelPlan, is_2d: bool, progress: bool = True,
                    colour_names: dict[str, list[str]] | None = None, series: str | None = None) -> Conversion:
    """Write ``dataset.json`` (and the files that need a change) into the empty raw folder ``folder``.
    ``colour_names`` names the three channels of a colour key (``-i R,G,B``); else NAME_R, NAME_G, NAME_B.
    ``series`` (``--series``) picks the series of a DICOM folder that holds several."""
    from tqdm import tqdm

    ending = choose_file_ending([f for c in cases for f in c.channels.values()], is_2d)
    colour = colour_channels(cases, infos, keys)
    channel_names = []
    for key, name in zip(keys, names):
        if key in colour:
            channel_names += (colour_names or {}).get(key) or [f"{name}_{c}" for c in RGB]
        else:
            channel_names.append(name)
    conv = Conversion(folder, ending, channel_names, colour)
    jobs = []
    for case in cases:
        images = []
        volumes: dict[Path, list[tuple[int, Path]]] = {}  # 4D files: split in one read each
        for key in keys:
            src = case.channels[key]
            if key in colour:
                outs = [folder / "imagesTr" / f"{case.name}_{len(images) + i:04d}{ending}" for i in range(3)]
                jobs.append((_write_split_rgb, src, outs))
                images += outs
            elif infos[src].volumes is not None:  # a 4D (Decathlon) image: this channel's volume, as 3D
                out = folder / "imagesTr" / f"{case.name}_{len(images):04d}{ending}"
                volumes.setdefault(src, []).append((case.volumes.get(key, 0), out))
                images.append(out)
            elif _usable_as_is(src, infos[src], ending):
                images.append(src.resolve())
            else:
                out = folder / "imagesTr" / f"{case.name}_{len(images):04d}{ending}"
                jobs.append((_write_image, src, out, series))
                images.append(out)
        jobs += [(_write_volumes, src, outs) for src, outs in volumes.items()]
        label = case.label
        if _label_usable_as_is(label, infos[label], ending, plan):
            label = label.resolve()
        else:
            out = folder / "labelsTr" / f"{case.name}{ending}"
            jobs.append((_write_label, label, out, plan.mapping, infos[label]))
            label = out
        conv.cases[case.name] = {"images": [str(p) for p in images], "label": str(label)}
    conv.written = sum(len(j[2]) if j[0] is _write_volumes else 3 if j[0] is _write_split_rgb else 1 for j in jobs)
    conv.referenced = sum(len(c["images"]) + 1 for c in conv.cases.values()) - conv.written
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        done = pool.map(lambda job: job[0](*job[1:]), jobs)
        for _ in tqdm(done, total=len(jobs), desc="Converting", unit="file", file=sys.stderr,
                      disable=not progress or len(jobs) < 50, mininterval=1.0):
            pass
    dataset_json = {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": plan.dataset_json_labels(),
        "numTraining": len(cases),
        "file_ending": ending,
        "dataset": conv.cases,
    }
    if plan.regions_class_order:
        dataset_json["regions_class_order"] = plan.regions_class_order
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return conv


def _usable_as_is(src: Path, info: FileInfo, ending: str) -> bool:
    """nnU-Net reads it unchanged: in the dataset's file ending (nnU-Net copies labels under that ending),
    one component per pixel, and a path that survives nnU-Net's ``expandvars``."""
    return image_ending(src) == ending and info.components == 1 and "$" not in str(src.resolve())


def _label_usable_as_is(src: Path, info: FileInfo, ending: str, plan: LabelPlan) -> bool:
    return (_usable_as_is(src, info, ending) and not info.dtype.startswith("float")
            and all(plan.mapping.get(int(v)) == int(v) for v in info.values or ()))


def _write_image(src: Path, out: Path, series: str | None = None) -> None:
    if is_planar(out):
        from PIL import Image

        with Image.open(src) as image:
            image = image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA") else image
            image.save(out)
    elif is_dicom_path(src):  # a DICOM series or multi-frame file, as one volume
        write_volume(read_image(src, series), out)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(sitk.ReadImage(str(src)), str(out), useCompression=True)


def _write_volumes(src: Path, outs: list[tuple[int, Path]]) -> None:
    """Volumes of a 4D file, each written as a 3D image on the same grid (the file read once)."""
    image = read_image(src)
    grid = spatial_part(image)
    for index, out in outs:
        write_volume(ImageData(grid.spacing, grid.origin, grid.direction, image.components,
                               array=image.array[index]), out)


def _write_split_rgb(src: Path, outs: list[Path]) -> None:
    from PIL import Image

    with Image.open(src) as image:
        for band, out in zip(image.convert("RGB").split(), outs):
            band.save(out)


def _write_label(src: Path, out: Path, mapping: dict[int, int], info: FileInfo) -> None:
    """Write the label with integer values mapped to nnU-Net's 0..N (uint8 unless more are needed)."""
    values = np.array(sorted(mapping), dtype=np.int64)
    targets = np.array([mapping[v] for v in sorted(mapping)])
    dtype = np.uint8 if targets.max(initial=0) < 256 else np.uint16

    def remap(array: np.ndarray) -> np.ndarray:
        if array.ndim == 3 and array.shape[-1] in (3, 4) and info.components > 1:
            array = array[..., 0]
        flat = np.rint(array).astype(np.int64)
        idx = np.clip(np.searchsorted(values, flat), 0, len(values) - 1)
        return np.where(values[idx] == flat, targets[idx], 0).astype(dtype)

    if is_planar(out):
        from PIL import Image

        with Image.open(src) as image:
            Image.fromarray(remap(np.asarray(image))).save(out)
    elif is_dicom_path(src):  # a DICOM-SEG, placed on its series' grid
        seg = read_image(src)
        write_volume(ImageData(seg.spacing, seg.origin, seg.direction, 1, array=remap(seg.array)), out)
    else:
        import SimpleITK as sitk

        image = sitk.ReadImage(str(src))
        result = sitk.GetImageFromArray(remap(sitk.GetArrayViewFromImage(image)))
        result.CopyInformation(image)
        sitk.WriteImage(result, str(out), useCompression=True)
