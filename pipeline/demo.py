"""Synthetic phantoms written in the NATIVE layouts of built-in sources (no network).

`python -m pipeline.demo OUT` writes Kvasir-SEG, BUSI and Montgomery folders whose lesions
are ellipses at known places, and (where SimpleITK is installed) a Medical Segmentation
Decathlon task of small CT volumes with a liver on the patient's right and a lesion in it,
so `make demo` runs the real adapters end to end, 2D and 3D. The benchmark uses the same
writers at realistic image sizes.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in normalised image coordinates (centre x, y; radii rx, ry)."""

    x: float
    y: float
    rx: float
    ry: float

    def mask(self, width: int, height: int) -> np.ndarray:
        cols = (np.arange(width) + 0.5) / width
        rows = (np.arange(height) + 0.5) / height
        return ((cols[None, :] - self.x) / self.rx) ** 2 + (
            (rows[:, None] - self.y) / self.ry
        ) ** 2 <= 1.0


def phantom(
    width: int, height: int, lesions: list[Ellipse], rng: np.random.Generator, rgb: bool
) -> np.ndarray:
    """A textured background with brighter lesions, as uint8 (H, W[, 3])."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = 90 + 40 * np.sin(xx / max(width, 1) * 3.1) * np.cos(yy / max(height, 1) * 2.3)
    image = base + rng.normal(0, 12, size=(height, width))
    for lesion in lesions:
        image[lesion.mask(width, height)] += 70
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rgb:
        tint = np.array([1.0, 0.8, 0.7])
        return np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
    return image


def random_lesion(rng: random.Random, scale: float = 1.0) -> Ellipse:
    return Ellipse(
        x=rng.uniform(0.15, 0.85),
        y=rng.uniform(0.15, 0.85),
        rx=rng.uniform(0.04, 0.12) * scale,
        ry=rng.uniform(0.04, 0.12) * scale,
    )


def _save_mask(mask: np.ndarray, path: Path, **options) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, **options)


def write_kvasir(root: Path, count: int, seed: int = 0, size: tuple[int, int] = (320, 256)) -> Path:
    """Kvasir-SEG layout: images/<id>.jpg with masks/<id>.jpg (lossy JPEG masks)."""
    folder = root / "Kvasir-SEG"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    rng, noise = random.Random(seed), np.random.default_rng(seed)
    for index in range(count):
        lesions = [random_lesion(rng)] + ([random_lesion(rng)] if index % 4 == 3 else [])
        name = f"demo{index:05d}.jpg"
        pixels = phantom(*size, lesions, noise, rgb=True)
        Image.fromarray(pixels).save(folder / "images" / name, quality=90)
        mask = np.logical_or.reduce([lesion.mask(*size) for lesion in lesions])
        _save_mask(mask, folder / "masks" / name, quality=90)
    return folder


def write_busi(root: Path, count: int, seed: int = 0, size: tuple[int, int] = (300, 240)) -> Path:
    """BUSI layout: class folders, "<class> (<n>).png" with "_mask.png" and "_mask_1.png"."""
    folder = root / "Dataset_BUSI_with_GT"
    rng, noise = random.Random(seed + 1), np.random.default_rng(seed + 1)
    for index in range(count):
        label = ("benign", "malignant", "normal")[index % 3]
        (folder / label).mkdir(parents=True, exist_ok=True)
        lesions = [] if label == "normal" else [random_lesion(rng)]
        second = label == "benign" and index % 2 == 0
        if second:
            lesions.append(random_lesion(rng))
        stem = f"{label} ({index + 1})"
        Image.fromarray(phantom(*size, lesions, noise, rgb=True)).save(
            folder / label / f"{stem}.png"
        )
        first = lesions[0].mask(*size) if lesions else np.zeros(size[::-1], dtype=bool)
        Image.fromarray(first).convert("1").save(folder / label / f"{stem}_mask.png")
        if second:
            _save_mask(lesions[1].mask(*size), folder / label / f"{stem}_mask_1.png")
    return folder


def write_montgomery(
    root: Path, count: int, seed: int = 0, size: tuple[int, int] = (256, 256)
) -> Path:
    """Montgomery layout: CXR_png/ with ManualMask/leftMask and rightMask (radiological)."""
    folder = root / "MontgomerySet"
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng, noise = random.Random(seed + 2), np.random.default_rng(seed + 2)
    for index in range(count):
        # Radiological display: the patient's right lung on the image's left.
        right = Ellipse(0.3 + rng.uniform(-0.03, 0.03), 0.5, 0.13, 0.3)
        left = Ellipse(0.7 + rng.uniform(-0.03, 0.03), 0.52, 0.12, 0.28)
        name = f"MCUCXR_{index + 1:04d}_{index % 2}.png"
        Image.fromarray(phantom(*size, [right, left], noise, rgb=False)).save(
            folder / "CXR_png" / name
        )
        _save_mask(left.mask(*size), folder / "ManualMask" / "leftMask" / name)
        _save_mask(right.mask(*size), folder / "ManualMask" / "rightMask" / name)
    return folder


def write_msd_ct(root: Path, count: int, seed: int = 0, size: int = 96) -> Path:
    """An MSD task of CT volumes (HU, LPS, 3.5 x 3.5 x 5 mm): a body centred on x = 0, a
    liver on the patient's RIGHT (label 1) and a lesion inside it (label 2)."""
    import json

    import SimpleITK as sitk

    task = root / "Task99_PhantomLiver"
    rng = np.random.default_rng(seed + 3)
    spacing = (3.5, 3.5, 5.0)
    mm = (np.arange(size) - (size - 1) / 2) * spacing[0]
    y, x = np.meshgrid(mm, mm, indexing="ij")  # rows: anterior -> posterior; cols: R -> L
    body = (x / 150) ** 2 + (y / 110) ** 2 <= 1
    entries = []
    for index in range(count):
        slices = 24
        image = np.full((slices, size, size), -1000.0)
        labels = np.zeros((slices, size, size), dtype=np.uint8)
        shift = rng.uniform(-8, 8)
        for z in range(slices):
            hu = np.where(body, 40.0, -1000.0)
            reach = 1 - ((z - slices / 2) / (slices / 2.5)) ** 2
            if reach > 0:
                liver = ((x + 60 + shift) / 55) ** 2 + ((y + 5) / 60) ** 2 <= reach
                lesion = ((x + 70 + shift) ** 2 + (y + 10) ** 2) <= 15**2 * reach
                hu[liver], labels[z][liver] = 60.0, 1
                hu[lesion & liver], labels[z][lesion & liver] = 5.0, 2
            image[z] = hu + rng.normal(0, 10, hu.shape)
        name = f"liver_{index:03d}.nii.gz"
        for folder, array in (("imagesTr", image.astype(np.int16)), ("labelsTr", labels)):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing(spacing)
            volume.SetOrigin((mm[0], mm[0], 0.0))  # identity direction: LPS
            (task / folder).mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(volume, str(task / folder / name))
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "PhantomLiver",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "lesion"},
        "licence": "CC0 (synthetic)",
        "training": entries,
    }
    (task / "dataset.json").write_text(json.dumps(description, indent=2))
    return task


def write_demo(root: Path, seed: int = 0) -> dict[str, Path]:
    """The demo data set: built-in sources in their native layouts (volumes need SimpleITK)."""
    folders = {
        "kvasir_seg": write_kvasir(root, 24, seed),
        "busi": write_busi(root, 18, seed),
        "montgomery": write_montgomery(root, 8, seed),
    }
    try:
        folders["msd"] = write_msd_ct(root, 4, seed)
    except ImportError:
        print("SimpleITK is not installed: the demo has no volumes (pip install 'mmrs[volumes]')")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="folder to write the demo data into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in write_demo(args.out, args.seed).items():
        print(f"demo data for {name}: {folder}")


if __name__ == "__main__":
    main()
