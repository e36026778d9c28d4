"""The patient's side wherever it is knowable: MR slices where the coil's signal falls off,
and frontal chest radiographs; lateral or undeclared films stay null."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sitk = pytest.importorskip("SimpleITK")

from pipeline.build.cases import SourceMeta  # noqa: E402
from pipeline.build.extract import extract_case  # noqa: E402
from pipeline.build.run import BuildConfig, SourceRequest, build  # noqa: E402
from pipeline.checks.folder import validate  # noqa: E402
from pipeline.geometry.patient import radiograph_midline  # noqa: E402
from pipeline.sources.spec import SpecError, load_spec  # noqa: E402

# An abdomen-like MR volume in LPS ([S, P, L]): 2 mm pixels, 4 mm slices, body 220 mm wide.
SHAPE = (28, 100, 128)
SPACING = (2.0, 2.0, 4.0)  # x, y, z
LABELS = {1: "kidney_left", 2: "kidney_right", 3: "spinal_cord", 4: "vertebrae_L2", 5: "marker"}
EXPECTED = {
    "kidney_left": "left",
    "kidney_right": "right",
    "spinal_cord": "midline",
    "vertebrae_L2": "midline",
    "marker": None,  # outside the body: no side, however bright
}
# Multiplicative fall-off of the signal toward the coil's edges: the first and last four
# slices, and one slice in the middle.
RAMP = (0.06, 0.15, 0.35, 0.6)
WEAK_MIDDLE = 13


def _mr_volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    _, p, l_ = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]].astype(float)
    cp, cl = 50.0, 60.0  # the body's centre (not the image's: the midline is found)
    outer = ((p - cp) / 38) ** 2 + ((l_ - cl) / 55) ** 2 <= 1
    inner = ((p - cp) / 34) ** 2 + ((l_ - cl) / 51) ** 2 <= 1
    image = np.where(outer, 900.0, 0.0)  # subcutaneous fat: bright
    image[inner] = 320.0  # muscle and organs
    labels = np.zeros(SHAPE, dtype=np.uint8)
    kidney = ((p - (cp + 12)) / 9) ** 2 + ((np.abs(l_ - cl) - 28) / 7) ** 2 <= 1
    labels[kidney & (l_ > cl)] = 1  # +x in LPS: the patient's left
    labels[kidney & (l_ < cl)] = 2
    labels[((p - (cp + 26)) / 2.5) ** 2 + ((l_ - cl) / 2.5) ** 2 <= 1] = 3
    labels[(((p - (cp + 18)) / 5) ** 2 + ((l_ - cl) / 7) ** 2 <= 1) & (labels == 0)] = 4
    image[labels == 1] = image[labels == 2] = 200.0  # kidneys darker than the muscle
    image[labels == 4] = 500.0
    marker = ((p - 10) / 3) ** 2 + ((l_ - 122) / 3) ** 2 <= 1  # on the table, beside the body
    labels[marker], image[marker] = 5, 900.0
    for index, gain in enumerate(RAMP):
        image[index] *= gain
        image[-1 - index] *= gain
    image[WEAK_MIDDLE] *= 0.3
    image += np.abs(rng.normal(0, 25, SHAPE))  # Rician-like background noise
    return image.astype(np.float32), labels


def _write_volume(root: Path, slices: str = "{mode: all}") -> Path:
    image, labels = _mr_volume()
    for array, folder in ((image, "images"), (labels, "labels")):
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing(SPACING)
        volume.SetOrigin((-127.0, -100.0, -50.0))
        (root / folder).mkdir(parents=True)
        sitk.WriteImage(volume, str(root / folder / "mr1.nii.gz"))
    labels_yaml = ", ".join(f"{k}: {v}" for k, v in LABELS.items())
    spec = root / "mr.yaml"
    spec.write_text(
        "name: mr_phantom\nmodality: mri\nimages: images/*.nii.gz\nmasks: labels/{name}\n"
        f"labels: {{{labels_yaml}}}\nslices: {slices}\n"
    )
    return spec


def _extract(root: Path, spec: Path):
    source = load_spec(spec)
    (case,) = [c for c in source.discover(root) if hasattr(c, "masks")]
    return extract_case(case, SourceMeta.of(source))


def test_mr_intensity_fall_off_keeps_every_slices_side(tmp_path: Path) -> None:
    """Every slice where a structure appears gets its side, the weak slices included."""
    slices = _extract(tmp_path, _write_volume(tmp_path))
    seen: dict[str, set[int]] = {name: set() for name in LABELS.values()}
    for image in slices:
        for target in image.targets:
            if target.facts.present:
                seen[target.target].add(image.slice_index)
                assert target.patient_side == EXPECTED[target.target], (
                    image.slice_index,
                    target.target,
                )
    weak = {*range(len(RAMP)), *range(SHAPE[0] - len(RAMP), SHAPE[0]), WEAK_MIDDLE}
    for name in LABELS.values():
        assert seen[name] == set(range(SHAPE[0])) and weak <= seen[name], name


def test_rows_name_structures_readably_and_validate(tmp_path: Path) -> None:
    """The text says "the left kidney" and "the L2 vertebra"; `target` keeps the source's
    name; `mmrs validate` re-derives every side (and the name's agreement with it)."""
    spec = _write_volume(tmp_path, slices="{mode: stride, stride: 3}")  # weak slices too
    out = tmp_path / "out"
    build(BuildConfig(sources=(SourceRequest(load_spec(spec), tmp_path),), out=out, progress=False))
    assert validate(out).ok
    rows = [
        r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
    ]
    names = {r["target"]: r["target_name"] for r in rows}
    assert names == {
        "kidney_left": "left kidney",
        "kidney_right": "right kidney",
        "spinal_cord": "spinal cord",
        "vertebrae_L2": "L2 vertebra",
        "marker": "marker",
    }
    for row in rows:
        text = row["question"] + row["answer"]
        assert row["target"] not in text or row["target"] == row["target_name"], text
        assert row["target_name"] in text, text
        if row["question_type"] != "negative":
            assert row["patient_side"] == EXPECTED[row["target"]], row["row_id"]


# A frontal chest radiograph: a thorax off the image's centre, two dark lung fields, the
# spine and mediastinum bright between them, the heart toward the patient's left.
H, W = 200, 240
THORAX_X = 0.56  # of the width: the midline is not the image's centre


def _chest() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[0:H, 0:W].astype(float)
    mid = THORAX_X * W
    thorax = ((cols - mid) / (0.4 * W)) ** 2 + ((rows - 0.55 * H) / (0.6 * H)) ** 2 <= 1
    image = np.where(thorax, 170.0, 25.0)
    lung = ((np.abs(cols - mid) - 0.2 * W) / (0.11 * W)) ** 2 + (
        (rows - 0.45 * H) / (0.3 * H)
    ) ** 2 <= 1
    right_lung = lung & (cols < mid)  # radiological: the patient's right on the image's left
    left_lung = lung & (cols > mid)
    image[lung] = 70.0
    image[np.abs(cols - mid) < 0.03 * W] = 225.0  # spine
    heart = ((cols - mid - 0.05 * W) / (0.12 * W)) ** 2 + ((rows - 0.7 * H) / (0.12 * H)) ** 2
    image[(heart <= 1) & ~lung] = 200.0
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, left_lung, right_lung


def _write_chest(root: Path, display: str | None, projection: str | None) -> Path:
    image, left, right = _chest()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / "c1.png")
    for name, mask in (("left_lung", left), ("right_lung", right), ("lungs", left | right)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"c1_{name}.png")
    lines = [
        "name: chest",
        "modality: xray",
        "images: images/*.png",
        "masks: masks/{stem}_*.png",
        'target_regex: "^{stem}_(?P<target>.+)$"',
    ]
    lines += [f"display: {display}"] if display else []
    lines += [f"projection: {projection}"] if projection else []
    spec = root / "chest.yaml"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def _sides(root: Path, spec: Path) -> dict[str, str | None]:
    (image,) = _extract(root, spec)
    return {t.target: t.patient_side for t in image.targets}


@pytest.mark.parametrize("projection", ["pa", "ap"])
def test_frontal_chest_radiograph_gives_each_lung_its_side(tmp_path: Path, projection: str) -> None:
    spec = _write_chest(tmp_path, "radiological", projection)
    sides = _sides(tmp_path, spec)
    assert sides == {"left lung": "left", "right lung": "right", "lungs": "bilateral"}
    image, _, _ = _chest()
    middle = radiograph_midline(image)
    assert middle is not None and abs(middle - THORAX_X * W) <= 3


@pytest.mark.parametrize(
    ("display", "projection"), [("radiological", "lateral"), ("radiological", None), (None, None)]
)
def test_lateral_or_undeclared_radiographs_stay_null(
    tmp_path: Path, display: str | None, projection: str | None
) -> None:
    spec = _write_chest(tmp_path, display, projection)
    assert set(_sides(tmp_path, spec).values()) == {None}


def test_a_film_without_lung_fields_has_no_midline() -> None:
    image, _, _ = _chest()
    flat = np.full_like(image, 150)
    assert radiograph_midline(flat) is None
    _, left, right = _chest()
    bright = np.where(left | right, 200, 30).astype(np.uint8)  # two bright blobs, no chest
    assert radiograph_midline(bright) is None
    cropped = image[:, 40:200]  # the lung fields run into the edges: no chest wall beyond
    assert radiograph_midline(cropped) is None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["display: none", "projection: pa"], "projection needs a display"),
        (["display: radiological", "projection: oblique"], "projection must be one of"),
        (["display: {right: posterior, down: inferior}", "projection: pa"], "coronal"),
        (["display_names: [a, b]"], "display_names must map"),
    ],
)
def test_bad_projection_or_display_names_are_clear_errors(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "\n".join(
            ["name: bad", "modality: xray", "images: '*.png'", "masks: '{stem}_m.png'", "target: x"]
            + lines
        )
    )
    with pytest.raises(SpecError, match=message) as error:
        load_spec(spec)
    assert str(spec) in str(error.value)


def test_projection_is_for_radiographs(tmp_path: Path) -> None:
    spec = tmp_path / "ct.yaml"
    spec.write_text(
        "name: ct2d\nmodality: ct\nimages: '*.png'\nmasks: '{stem}_m.png'\ntarget: x\n"
        "display: radiological\nprojection: pa\n"
    )
    with pytest.raises(SpecError, match="modality xray"):
        load_spec(spec)
