"""Every 2D source in ../shared/real_samples converts and validates through the real adapters.

The samples are third-party data (see each SOURCE.md): they are read in place, or arranged
into a source's native layout inside pytest's tmp_path, never copied into the repository.
Expected masks are read here with Pillow alone (grey > 127, palette indices), independently
of pipeline.io.images, and every build is checked with pipeline.checks.folder.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from pipeline.build.cases import SourceMeta
from pipeline.build.extract import extract_case
from pipeline.build.run import BuildConfig, BuildSummary, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.geometry.facts import Facts, compute_facts
from pipeline.io.images import read_binary_mask
from pipeline.sources import REGISTRY, Case, SourceInfo, load_spec

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLES = SHARED / "real_samples"
CONTRACT = SHARED / "contract_vectors.json"

pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason="../shared/real_samples not found: real-sample tests need the shared samples",
)

KVASIR = SAMPLES / "endoscopy" / "kvasir_seg"
BUSI = SAMPLES / "ultrasound" / "busi"
HAM = SAMPLES / "dermoscopy" / "ham10000_isic"
MONTGOMERY = SAMPLES / "xray" / "montgomery_lung_imlab_demo"
COVID = SAMPLES / "ct" / "covid_semiseg_infnet"
SAM_MED2D = SAMPLES / "ct" / "sam_med2d_demo_amos_totalseg"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FACT_COLUMNS = ("centroid", "bbox", "area_fraction", "n_components", "quadrant", "zone")
HAM_CASES = ("ISIC_0024311", "ISIC_0027001", "ISIC_0027287", "ISIC_0027533", "ISIC_0027800")
HAM_WITHHELD = "ISIC_0027800"  # arranged with its mask but without its image
HAM_VALIDATION = "ISIC_0027533"  # arranged in the ISIC 2018 Validation folders
COVID_CASES = ("6", "7", "8", "18", "21", "59", "60", "61", "63", "64")
COVID_NO_CONSOLIDATION = "64"

Row = dict[str, Any]


# -- reading the samples independently of the pipeline -------------------------------------


def grey_mask(path: Path) -> np.ndarray:
    """A binary mask file as the contract reads it: Pillow convert('L') > 127."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def palette_indices(path: Path) -> np.ndarray:
    """The raw palette indices of a mode-P label map."""
    with Image.open(path) as image:
        assert image.mode == "P", f"{path}: expected a palette PNG, got mode {image.mode!r}"
        return np.asarray(image)


def pixels(data: bytes | Path) -> np.ndarray:
    """Decoded pixels of image bytes or an image file."""
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return np.asarray(image)


def union(paths: Iterable[Path]) -> np.ndarray:
    """Union of binary mask files (read with grey_mask)."""
    masks = [grey_mask(path) for path in paths]
    assert masks, "union of no mask files"
    return np.logical_or.reduce(masks)


# -- arranging native layouts in tmp_path -----------------------------------------------------


def copy(src: Path, dst: Path) -> Path:
    """Copy one sample file to dst (parents created)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def save_as(src: Path | np.ndarray, dst: Path, mode: str | None = None) -> Path:
    """Re-save an image file (or a boolean mask as 0/255) in the format of dst's suffix."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, np.ndarray):
        Image.fromarray(src.astype(np.uint8) * 255).save(dst)
        return dst
    with Image.open(src) as image:
        (image.convert(mode) if mode else image).save(dst)
    return dst


def write_spec(folder: Path, spec: dict[str, Any]) -> SourceInfo:
    """Write a YAML source spec into folder and load it through the registry's loader."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_spec(path)


# -- building and checking ----------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A finished, validated build and its rows."""

    summary: BuildSummary
    out: Path
    rows: list[Row]
    errors: list[dict[str, Any]]

    def counts(self, source: str) -> tuple[int, int, int, int]:
        """(discovered, converted, skipped, failed) of one source."""
        c = self.summary.sources[source]
        return c.discovered, c.converted, c.skipped, c.failed

    def case_ids(self, source: str) -> set[str]:
        return {row["case_id"] for row in self.rows if row["source"] == source}

    def case_rows(self, case_id: str, target: str | None = None) -> list[Row]:
        rows = [
            row
            for row in self.rows
            if row["case_id"] == case_id and (target is None or row["target"] == target)
        ]
        assert rows, f"no rows for case {case_id!r} target {target!r}"
        return rows

    def whole_rows(self, case_id: str, target: str) -> list[Row]:
        """Rows about the whole target (a referring row may carry one instance only)."""
        rows = [r for r in self.case_rows(case_id, target) if r["question_type"] != "referring"]
        assert rows, f"no whole-target rows for case {case_id!r} target {target!r}"
        return rows

    def targets(self, case_id: str) -> set[str]:
        return {row["target"] for row in self.case_rows(case_id)}

    def errors_of(self, case_id: str) -> list[dict[str, Any]]:
        return [entry for entry in self.errors if entry["case_id"] == case_id]


def run_build(
    tmp_path: Path,
    *requests: tuple[SourceInfo, Path],
    name: str = "out",
) -> Built:
    """Build the sources into tmp_path/name, check the accounting, validate, read the rows."""
    out = tmp_path / name
    summary = build(
        BuildConfig(
            sources=tuple(SourceRequest(source, root) for source, root in requests),
            out=out,
            progress=False,
        )
    )
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    logged = Counter((entry["source"], entry["status"]) for entry in errors)
    for source, c in summary.sources.items():
        assert c.discovered == c.converted + c.skipped + c.failed, f"{source}: {vars(c)}"
        assert logged[(source, "skipped")] == c.skipped, f"{source}: {vars(c)} vs {errors}"
        assert logged[(source, "failed")] == c.failed, f"{source}: {vars(c)} vs {errors}"
    assert all(entry["reason"] and entry["file"] for entry in errors), errors

    result = validate(out)
    assert result.ok, f"validate() found {result.violation_count} violation(s):\n" + (
        "\n".join(result.violations)
    )
    rows = [
        row
        for shard in sorted((out / "data").glob("*.parquet"))
        for row in pq.read_table(shard).to_pylist()
    ]
    assert len(rows) == sum(c.rows for c in summary.sources.values())
    built = Built(summary, out, rows, errors)
    for source, c in summary.sources.items():
        assert len(built.case_ids(source)) == c.converted, f"{source}: converted cases vs rows"
    return built


def row_mask(row: Row) -> np.ndarray:
    """The row's mask as booleans (it must be a single-channel 0/255 PNG)."""
    data = row["mask"]["bytes"]
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L", f"row {row['row_id']}: mask mode {image.mode!r}"
        values = np.asarray(image)
    assert set(np.unique(values).tolist()) <= {0, 255}
    return values > 127


def assert_facts(row: Row, facts: Facts) -> None:
    """The row's fact columns equal the given facts."""
    expected = facts.as_row()
    for column in FACT_COLUMNS:
        want, got = expected[column], row[column]
        if isinstance(want, (float, list)):
            assert got == pytest.approx(want, abs=1e-12), f"{row['row_id']}: {column}"
        else:
            assert got == want, f"{row['row_id']}: {column} is {got!r}, expected {want!r}"


def assert_whole_target(rows: list[Row], expected: np.ndarray) -> None:
    """Every row's mask is exactly `expected`, and its facts are the facts of `expected`."""
    facts = compute_facts(expected)
    for row in rows:
        mask = row_mask(row)
        assert mask.shape == expected.shape, f"{row['case_id']}/{row['target']}: mask shape"
        assert np.array_equal(mask, expected), f"{row['case_id']}/{row['target']}: mask differs"
        assert_facts(row, facts)


def assert_negative(rows: list[Row]) -> None:
    """Rows of an absent target: negative questions, empty masks, null facts."""
    for row in rows:
        assert row["question_type"] == "negative", row["row_id"]
        assert not row_mask(row).any(), row["row_id"]
        assert row["n_components"] == 0 and row["area_fraction"] == 0.0
        assert row["centroid"] is None and row["bbox"] is None and row["zone"] is None


# -- contract vectors --------------------------------------------------------------------------


def _contract_params() -> list[Any]:
    if not CONTRACT.is_file():
        reason = "../shared/contract_vectors.json not found: real-sample tests need it"
        return [pytest.param(None, id="no-contract", marks=pytest.mark.skip(reason=reason))]
    entries = json.loads(CONTRACT.read_text())["real_samples"]
    return [pytest.param(e, id=e["file"].removeprefix("real_samples/")) for e in entries]


@pytest.mark.parametrize("entry", _contract_params())
def test_contract_vector_of_real_mask(entry: dict[str, Any]) -> None:
    """read_binary_mask + compute_facts reproduce the independent facts of each sample mask."""
    path = SHARED / entry["file"]
    assert path.is_file(), f"contract vector names a missing file: {path}"
    mask = read_binary_mask(path)
    assert np.array_equal(mask, grey_mask(path)), "read_binary_mask differs from L > 127"
    assert list(mask.shape) == entry["shape"]
    facts = compute_facts(mask)
    if entry.get("empty"):  # an all-background mask: no fact can be derived
        assert not mask.any()
        assert (facts.centroid, facts.bbox, facts.quadrant, facts.zone) == (None,) * 4
        assert facts.area_fraction == 0.0 and facts.n_components == 0
        return
    assert facts.centroid == pytest.approx(entry["centroid"], abs=1e-6)
    assert facts.bbox == pytest.approx(entry["bbox"], abs=1e-6)
    assert facts.area_fraction == pytest.approx(entry["area_fraction"], abs=1e-6)
    assert facts.quadrant == entry["quadrant"]
    assert facts.zone == entry["zone"]


# -- built-in adapters -------------------------------------------------------------------------


def test_kvasir_seg_native_layout(tmp_path: Path) -> None:
    """Kvasir-SEG as shipped: JPEG masks with grey levels threshold to the contract masks."""
    built = run_build(tmp_path, (REGISTRY["kvasir_seg"], KVASIR))
    images = sorted((KVASIR / "Kvasir-SEG" / "images").glob("*.jpg"))
    assert len(images) == 5
    assert built.counts("kvasir_seg") == (5, 5, 0, 0)
    for image in images:
        rows = built.case_rows(image.stem)
        assert built.targets(image.stem) == {"polyp"}
        assert {row["modality"] for row in rows} == {"endoscopy"}
        # No pixel changed: the row holds the source file's own JPEG bytes.
        assert all(row["image"]["bytes"] == image.read_bytes() for row in rows)
        mask = grey_mask(KVASIR / "Kvasir-SEG" / "masks" / image.name)
        assert_whole_target(built.whole_rows(image.stem, "polyp"), mask)


def test_busi_native_layout(tmp_path: Path) -> None:
    """BUSI: names with spaces, a `_mask_1` second lesion, and normal images as negatives."""
    built = run_build(tmp_path, (REGISTRY["busi"], BUSI))
    assert built.counts("busi") == (12, 12, 0, 0)
    for folder in ("benign", "malignant"):
        for image in sorted((BUSI / folder).glob("* ([0-9]*).png")):
            masks = sorted((BUSI / folder).glob(f"{image.stem}_mask*.png"))
            assert_whole_target(built.whole_rows(image.stem, "breast tumor"), union(masks))

    second_lesion = built.whole_rows("benign (25)", "breast tumor")
    assert all(row["n_components"] >= 2 for row in second_lesion)
    assert {len(row["components"]) for row in second_lesion} == {2}
    # Both lesions lie in the upper center zone: no instance can be named by its zone alone,
    # so the case has no referring row (which would carry a single instance's mask).
    assert [c["zone"] for c in second_lesion[0]["components"]] == ["upper center"] * 2
    assert all(row["question_type"] != "referring" for row in built.case_rows("benign (25)"))

    for case_id in ("normal (1)", "normal (2)"):
        rows = built.case_rows(case_id)
        assert built.targets(case_id) == {"breast tumor"}
        assert_negative(rows)
    other = [row for row in built.rows if not row["case_id"].startswith("normal")]
    assert all(row["question_type"] != "negative" for row in other)


def arrange_isic2018(root: Path) -> None:
    """ham10000_isic as ISIC 2018 Task 1: one case in Validation, one mask without image."""
    for case in HAM_CASES:
        official = "Validation" if case == HAM_VALIDATION else "Training"
        if case != HAM_WITHHELD:
            copy(
                HAM / "test_images" / f"{case}.jpg",
                root / f"ISIC2018_Task1-2_{official}_Input" / f"{case}.jpg",
            )
        copy(
            HAM / "test_masks" / f"{case}.png",
            root / f"ISIC2018_Task1_{official}_GroundTruth" / f"{case}_segmentation.png",
        )


def test_isic2018_official_split_and_orphan_mask(tmp_path: Path) -> None:
    """ISIC 2018 keeps its official split; a mask without image is reported, not dropped."""
    root = tmp_path / "isic"
    arrange_isic2018(root)
    built = run_build(tmp_path, (REGISTRY["isic2018"], root))
    assert built.counts("isic2018") == (5, 4, 1, 0)
    converted = set(HAM_CASES) - {HAM_WITHHELD}
    assert built.case_ids("isic2018") == converted
    for case in sorted(converted):
        rows = built.case_rows(case)
        expected_split = "validation" if case == HAM_VALIDATION else "train"
        assert {row["split"] for row in rows} == {expected_split}
        assert {row["modality"] for row in rows} == {"dermoscopy"}
        original = (HAM / "test_images" / f"{case}.jpg").read_bytes()
        assert all(row["image"]["bytes"] == original for row in rows)
        mask = grey_mask(HAM / "test_masks" / f"{case}.png")
        assert_whole_target(built.whole_rows(case, "skin lesion"), mask)
    (orphan,) = built.errors
    assert orphan["case_id"] == HAM_WITHHELD
    assert orphan["status"] == "skipped" and "no image" in orphan["reason"]
    assert orphan["file"] == f"ISIC2018_Task1_Training_GroundTruth/{HAM_WITHHELD}_segmentation.png"


def test_ph2_bmp_images_become_png(tmp_path: Path) -> None:
    """PH2 layout with BMP files: images are re-encoded losslessly as PNG."""
    root = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    cases = {f"IMD{index:03d}": case for index, case in enumerate(HAM_CASES, start=1)}
    for case_id, case in cases.items():
        folder = root / case_id
        save_as(
            HAM / "test_images" / f"{case}.jpg",
            folder / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp",
        )
        save_as(
            HAM / "test_masks" / f"{case}.png",
            folder / f"{case_id}_lesion" / f"{case_id}_lesion.bmp",
            "L",
        )
    # A case folder whose image is missing: reported as skipped.
    (root / "IMD099" / "IMD099_Dermoscopic_Image").mkdir(parents=True)
    save_as(
        HAM / "test_masks" / f"{HAM_WITHHELD}.png",
        root / "IMD099" / "IMD099_lesion" / "IMD099_lesion.bmp",
        "L",
    )

    built = run_build(tmp_path, (REGISTRY["ph2"], tmp_path / "PH2Dataset"))
    assert built.counts("ph2") == (6, 5, 1, 0)
    (missing,) = built.errors
    assert missing["case_id"] == "IMD099" and missing["status"] == "skipped"
    for case_id, case in cases.items():
        rows = built.case_rows(case_id)
        bmp = root / case_id / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp"
        for row in rows:
            assert row["source_file"] == f"{case_id}.bmp"
            assert row["image"]["bytes"].startswith(PNG_SIGNATURE)
            assert np.array_equal(pixels(row["image"]["bytes"]), pixels(bmp))
        mask = grey_mask(HAM / "test_masks" / f"{case}.png")
        assert_whole_target(built.whole_rows(case_id, "skin lesion"), mask)


@pytest.mark.parametrize("layout", ["release-tif", "repackaged-png-tif"])
def test_cvc_clinicdb_layouts(tmp_path: Path, layout: str) -> None:
    """CVC-ClinicDB: TIFF release (re-encoded to PNG), or PNG/ + TIF/ copies (PNG/ is used)."""
    kvasir = sorted((KVASIR / "Kvasir-SEG" / "images").glob("*.jpg"))
    folder = tmp_path / "data" / "CVC-ClinicDB"
    variants = {
        "release-tif": [("", ".tif")],
        "repackaged-png-tif": [("PNG", ".png"), ("TIF", ".tif")],
    }
    frames: dict[str, Path] = {}
    for sub, suffix in variants[layout]:
        for number, image in enumerate(kvasir, start=1):
            target = folder / sub / "Original" / f"{number}{suffix}"
            save_as(image, target)
            save_as(
                KVASIR / "Kvasir-SEG" / "masks" / image.name,
                folder / sub / "Ground Truth" / f"{number}{suffix}",
                "L",
            )
            frames.setdefault(str(number), target)

    built = run_build(tmp_path, (REGISTRY["cvc_clinicdb"], tmp_path / "data"))
    assert built.counts("cvc_clinicdb") == (5, 5, 0, 0)
    for number, image in enumerate(kvasir, start=1):
        case_id, stored = str(number), frames[str(number)]
        rows = built.case_rows(case_id)
        for row in rows:
            assert row["source_file"] == stored.name
            if stored.suffix == ".png":
                assert row["image"]["bytes"] == stored.read_bytes()
            else:
                assert row["image"]["bytes"].startswith(PNG_SIGNATURE)
                assert np.array_equal(pixels(row["image"]["bytes"]), pixels(stored))
        mask = grey_mask(KVASIR / "Kvasir-SEG" / "masks" / image.name)
        assert_whole_target(built.whole_rows(case_id, "polyp"), mask)


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patient's left lung, patient's right lung) of a merged mask in radiological display.

    The patient's left lung is the component on the IMAGE right.
    """
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    assert count == 2, f"expected two lung components, found {count}"
    image_left, image_right = sorted(
        (labelled == label for label in (1, 2)), key=lambda part: np.nonzero(part)[1].mean()
    )
    return image_right, image_left


def test_montgomery_left_and_right_lung(tmp_path: Path) -> None:
    """Montgomery layout from the merged imlab masks: the left lung lies on the image right."""
    root = tmp_path / "MontgomerySet"
    expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for number in range(1, 5):
        name = f"MCUCXR_{number:04d}_0.png"
        save_as(MONTGOMERY / "Data" / f"{number}.jpg", root / "CXR_png" / name)
        left, right = split_lungs(grey_mask(MONTGOMERY / "Data" / f"{number}-mask.png"))
        save_as(left, root / "ManualMask" / "leftMask" / name)
        save_as(right, root / "ManualMask" / "rightMask" / name)
        expected[name.removesuffix(".png")] = (left, right)

    built = run_build(tmp_path, (REGISTRY["montgomery"], tmp_path))
    assert built.counts("montgomery") == (4, 4, 0, 0)
    for case_id, (left, right) in expected.items():
        assert built.targets(case_id) == {"left lung", "right lung"}
        rows = built.case_rows(case_id)
        assert {row["patient_id"] for row in rows} == {case_id.removesuffix("_0")}
        assert {row["modality"] for row in rows} == {"xray"}
        png = root / "CXR_png" / f"{case_id}.png"
        assert all(row["image"]["bytes"] == png.read_bytes() for row in rows)
        left_rows = built.whole_rows(case_id, "left lung")
        right_rows = built.whole_rows(case_id, "right lung")
        assert_whole_target(left_rows, left)
        assert_whole_target(right_rows, right)
        assert all(row["centroid"][0] > 0.5 for row in left_rows)
        assert all(row["centroid"][0] < 0.5 for row in right_rows)


COVID_QU_EX_GROUPS = {"Train": ("6", "7", "8", "18"), "Val": ("21", "59", "60"), "Test": ("61",)}
COVID_QU_EX_SPLITS = {"Train": "train", "Val": "validation", "Test": "test"}
COVID_INFECTION_CASES = ("61", "63", "64")


def _covid_case(folder: Path, case: str) -> None:
    """One covid_semiseg_infnet slice as a COVID-QU-Ex image with its "lung mask"."""
    save_as(
        COVID / "LungInfection-Test" / "Imgs" / f"{case}.jpg", folder / "images" / f"{case}.png"
    )
    copy(COVID / "LungInfection-Test" / "GT" / f"{case}.png", folder / "lung masks" / f"{case}.png")


def arrange_covid_qu_ex_lungs(root: Path) -> None:
    """covid_semiseg_infnet as COVID-QU-Ex "Lung Segmentation Data" in Train/Val/Test."""
    for group, cases in COVID_QU_EX_GROUPS.items():
        for case in cases:
            _covid_case(root / "Lung Segmentation Data" / group / "COVID-19", case)


def arrange_covid_qu_ex_infection(root: Path) -> None:
    """COVID-QU-Ex "Infection Segmentation Data": lung masks plus 1-bit infection masks.

    The GT-2 (consolidation) masks stand in for infection masks; case 64 has none.
    """
    folder = root / "Infection Segmentation Data" / "Test" / "COVID-19"
    for case in COVID_INFECTION_CASES:
        _covid_case(folder, case)
        copy(
            COVID / "MultiClassInfection-Test" / "GT-2" / f"{case}.png",
            folder / "infection masks" / f"{case}.png",
        )


def test_covid_qu_ex_official_splits(tmp_path: Path) -> None:
    """COVID-QU-Ex layout: Train/Val/Test folders map to train/validation/test."""
    root = tmp_path / "COVID-QU-Ex"
    arrange_covid_qu_ex_lungs(root)
    built = run_build(tmp_path, (REGISTRY["covid_qu_ex"], root))
    assert built.counts("covid_qu_ex") == (8, 8, 0, 0)
    for group, cases in COVID_QU_EX_GROUPS.items():
        for case in cases:
            case_id = f"Lung Segmentation Data/{group}/COVID-19/{case}"
            rows = built.case_rows(case_id)
            assert {row["split"] for row in rows} == {COVID_QU_EX_SPLITS[group]}
            assert {row["patient_id"] for row in rows} == {case}
            assert built.targets(case_id) == {"lungs"}
            png = root / "Lung Segmentation Data" / group / "COVID-19" / "images" / f"{case}.png"
            assert all(row["image"]["bytes"] == png.read_bytes() for row in rows)
            lungs = grey_mask(COVID / "LungInfection-Test" / "GT" / f"{case}.png")
            assert_whole_target(built.whole_rows(case_id, "lungs"), lungs)


def test_covid_qu_ex_infection_masks(tmp_path: Path) -> None:
    """An "infection masks" sibling adds a target; an empty infection mask gives negatives."""
    root = tmp_path / "COVID-QU-Ex"
    arrange_covid_qu_ex_infection(root)
    built = run_build(tmp_path, (REGISTRY["covid_qu_ex"], root))
    assert built.counts("covid_qu_ex") == (3, 3, 0, 0)
    for case in COVID_INFECTION_CASES:
        case_id = f"Infection Segmentation Data/Test/COVID-19/{case}"
        assert built.targets(case_id) == {"lungs", "covid-19 infection"}
        assert {row["split"] for row in built.case_rows(case_id)} == {"test"}
        lungs = grey_mask(COVID / "LungInfection-Test" / "GT" / f"{case}.png")
        assert_whole_target(built.whole_rows(case_id, "lungs"), lungs)
        infection = built.case_rows(case_id, "covid-19 infection")
        if case == COVID_NO_CONSOLIDATION:
            assert_negative(infection)
        else:
            gt2 = grey_mask(COVID / "MultiClassInfection-Test" / "GT-2" / f"{case}.png")
            assert_whole_target(built.whole_rows(case_id, "covid-19 infection"), gt2)


# -- generic YAML specs ------------------------------------------------------------------------

HAM_SPEC = {
    "name": "ham10000_spec",
    "modality": "dermoscopy",
    "target": "skin lesion",
    "images": "test_images/*.jpg",
    "masks": "test_masks/{stem}.png",
}


def test_spec_ham10000(tmp_path: Path) -> None:
    """A spec over ham10000_isic, read in place."""
    built = run_build(tmp_path, (write_spec(tmp_path, HAM_SPEC), HAM))
    assert built.counts("ham10000_spec") == (5, 5, 0, 0)
    assert built.errors == []
    assert built.case_ids("ham10000_spec") == {f"test_images/{case}" for case in HAM_CASES}
    for case in HAM_CASES:
        rows = built.case_rows(f"test_images/{case}")
        assert {row["modality"] for row in rows} == {"dermoscopy"}
        original = (HAM / "test_images" / f"{case}.jpg").read_bytes()
        assert all(row["image"]["bytes"] == original for row in rows)
        mask = grey_mask(HAM / "test_masks" / f"{case}.png")
        assert_whole_target(built.whole_rows(f"test_images/{case}", "skin lesion"), mask)


def test_spec_reports_mask_without_image(tmp_path: Path) -> None:
    """A mask the spec's pattern reaches but no image claims is skipped, with its file."""
    root = tmp_path / "ham"
    for case in HAM_CASES:
        if case != HAM_WITHHELD:
            copy(HAM / "test_images" / f"{case}.jpg", root / "test_images" / f"{case}.jpg")
        copy(HAM / "test_masks" / f"{case}.png", root / "test_masks" / f"{case}.png")
    built = run_build(tmp_path, (write_spec(tmp_path, HAM_SPEC), root))
    assert built.counts("ham10000_spec") == (5, 4, 1, 0)
    (orphan,) = built.errors
    assert orphan["status"] == "skipped" and "no image" in orphan["reason"]
    assert orphan["file"] == f"test_masks/{HAM_WITHHELD}.png"


def covid_labels_spec(folder: Path, negatives: bool) -> SourceInfo:
    """The palette masks of COVID-SemiSeg (1 = GGO, 2 = consolidation) as a spec."""
    return write_spec(
        folder,
        {
            "name": "covid_multiclass",
            "modality": "ct",
            "images": "LungInfection-Test/Imgs/*.jpg",
            "masks": "MultiClassInfection-Test/GT/{stem}.png",
            "labels": {1: "ground-glass opacity", 2: "consolidation"},
            "negatives": negatives,
        },
    )


@pytest.mark.parametrize("negatives", [True, False], ids=["negatives", "no-negatives"])
def test_spec_covid_palette_labels(tmp_path: Path, negatives: bool) -> None:
    """Palette label maps split into one target per label; case 64 has no consolidation."""
    built = run_build(tmp_path, (covid_labels_spec(tmp_path, negatives), COVID))
    no_consolidation = f"LungInfection-Test/Imgs/{COVID_NO_CONSOLIDATION}"
    if negatives:
        assert built.counts("covid_multiclass") == (10, 10, 0, 0)
        assert built.errors == []
        assert_negative(built.case_rows(no_consolidation, "consolidation"))
        ggo = palette_indices(COVID / "MultiClassInfection-Test" / "GT" / "64.png") == 1
        assert_whole_target(built.whole_rows(no_consolidation, "ground-glass opacity"), ggo)
    else:
        assert built.counts("covid_multiclass") == (10, 9, 1, 0)
        assert no_consolidation not in built.case_ids("covid_multiclass")
        (entry,) = built.errors
        assert entry["case_id"] == no_consolidation and entry["status"] == "skipped"
        assert "consolidation" in entry["reason"]
        assert entry["file"] == f"{no_consolidation}.jpg"
    for case in COVID_CASES:
        case_id = f"LungInfection-Test/Imgs/{case}"
        if case == COVID_NO_CONSOLIDATION:
            continue
        assert built.targets(case_id) == {"ground-glass opacity", "consolidation"}
        assert all(row["question_type"] != "negative" for row in built.case_rows(case_id))
        labels = palette_indices(COVID / "MultiClassInfection-Test" / "GT" / f"{case}.png")
        # The palette's label layers are the dataset's own 1-bit GT-1 / GT-2 masks.
        ggo = grey_mask(COVID / "MultiClassInfection-Test" / "GT-1" / f"{case}.png")
        consolidation = grey_mask(COVID / "MultiClassInfection-Test" / "GT-2" / f"{case}.png")
        assert np.array_equal(labels == 1, ggo) and np.array_equal(labels == 2, consolidation)
        assert_whole_target(built.whole_rows(case_id, "ground-glass opacity"), ggo)
        assert_whole_target(built.whole_rows(case_id, "consolidation"), consolidation)


def test_spec_covid_one_bit_masks(tmp_path: Path) -> None:
    """The 1-bit GT-1 masks (mode '1') via a spec equal label 1 of the palette masks."""
    spec = write_spec(
        tmp_path,
        {
            "name": "covid_ggo",
            "modality": "ct",
            "target": "ground-glass opacity",
            "images": "LungInfection-Test/Imgs/*.jpg",
            "masks": "MultiClassInfection-Test/GT-1/{stem}.png",
        },
    )
    built = run_build(tmp_path, (spec, COVID))
    assert built.counts("covid_ggo") == (10, 10, 0, 0)
    for case in COVID_CASES:
        case_id = f"LungInfection-Test/Imgs/{case}"
        assert built.targets(case_id) == {"ground-glass opacity"}
        labels = palette_indices(COVID / "MultiClassInfection-Test" / "GT" / f"{case}.png")
        assert_whole_target(built.whole_rows(case_id, "ground-glass opacity"), labels == 1)


SAM_MED2D_TARGETS = {
    "amos_0004_75": {"aorta", "inferior vena cava", "liver"},
    "amos_0006_90": {"aorta", "inferior vena cava", "liver", "spleen"},
    "s0114_111": {
        "aorta",
        "autochthon left",
        "autochthon right",
        "heart atrium left",
        "heart atrium right",
        "heart myocardium",
        "heart ventricle left",
        "heart ventricle right",
        "lung lower lobe left",
        "lung lower lobe right",
        "lung middle lobe right",
        "lung upper lobe left",
        "rib left 9",
        "rib right 9",
        "vertebrae T9",
    },
    "s0619_32": {
        "colon",
        "femur right",
        "gluteus maximus left",
        "gluteus maximus right",
        "hip left",
        "hip right",
    },
}


def sam_med2d_spec(folder: Path) -> SourceInfo:
    """SA-Med2D demo: one mask file per structure instance, the target in its name."""
    return write_spec(
        folder,
        {
            "name": "sam_med2d_demo",
            "modality": "ct",
            "images": "data_demo/images/*.png",
            "masks": "data_demo/masks/{stem}_*.png",
            "target_regex": r"^{stem}_(?P<target>.+)_\d{3}$",
        },
    )


def test_spec_sam_med2d_one_file_per_instance(tmp_path: Path) -> None:
    """SA-Med2D: targets from mask names; `hip_left_000` + `_001` are one 2-part target."""
    built = run_build(tmp_path, (sam_med2d_spec(tmp_path), SAM_MED2D))
    assert built.counts("sam_med2d_demo") == (4, 4, 0, 0)
    masks = SAM_MED2D / "data_demo" / "masks"
    for image, targets in SAM_MED2D_TARGETS.items():
        case_id = f"data_demo/images/{image}"
        assert built.targets(case_id) == targets
        png = SAM_MED2D / "data_demo" / "images" / f"{image}.png"
        assert all(row["image"]["bytes"] == png.read_bytes() for row in built.case_rows(case_id))
        for target in targets:
            files = sorted(masks.glob(f"{image}_{target.replace(' ', '_')}_[0-9][0-9][0-9].png"))
            assert files, f"no mask file for {image} {target}"
            assert_whole_target(built.whole_rows(case_id, target), union(files))

    hip_case = "data_demo/images/s0619_32"
    for side in ("left", "right"):
        pieces = [grey_mask(masks / f"s0619_32_hip_{side}_{i:03d}.png") for i in (0, 1)]
        whole = built.whole_rows(hip_case, f"hip {side}")
        assert all(row["n_components"] == 2 for row in whole)
        referring = [
            row
            for row in built.case_rows(hip_case, f"hip {side}")
            if row["question_type"] == "referring"
        ]
        assert referring, f"no referring row for hip {side}"
        for row in referring:
            assert row["n_components"] == 1
            assert any(np.array_equal(row_mask(row), piece) for piece in pieces)


@pytest.mark.parametrize("case", ["covid_qu_ex-infection", "sam_med2d"])
def test_numbered_target_names_validate(tmp_path: Path, case: str) -> None:
    """Builds whose target names hold a number pass validate() with no violation."""
    if case == "sam_med2d":
        request = (sam_med2d_spec(tmp_path), SAM_MED2D)
    else:
        arrange_covid_qu_ex_infection(tmp_path / "COVID-QU-Ex")
        request = (REGISTRY["covid_qu_ex"], tmp_path / "COVID-QU-Ex")
    run_build(tmp_path, request)


def test_identical_images_across_sources_are_reported(tmp_path: Path) -> None:
    """ISIC 2018 and a HAM10000 spec share images: the second copies are skipped, with reason."""
    root = tmp_path / "isic"
    arrange_isic2018(root)
    built = run_build(tmp_path, (REGISTRY["isic2018"], root), (write_spec(tmp_path, HAM_SPEC), HAM))
    assert built.counts("isic2018") == (5, 4, 1, 0)
    assert built.counts("ham10000_spec") == (5, 1, 4, 0)
    assert built.case_ids("ham10000_spec") == {f"test_images/{HAM_WITHHELD}"}
    duplicates = [e for e in built.errors if e["source"] == "ham10000_spec"]
    shared = sorted(f"test_images/{case}" for case in HAM_CASES if case != HAM_WITHHELD)
    assert sorted(e["case_id"] for e in duplicates) == shared
    for entry in duplicates:
        assert entry["reason"].startswith("identical image already converted as isic2018/")


def _arrange_montgomery(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The imlab samples in Montgomery's layout; (left, right) lung masks by case id."""
    expected = {}
    for number in range(1, 5):
        name = f"MCUCXR_{number:04d}_0.png"
        save_as(MONTGOMERY / "Data" / f"{number}.jpg", root / "CXR_png" / name)
        left, right = split_lungs(grey_mask(MONTGOMERY / "Data" / f"{number}-mask.png"))
        save_as(left, root / "ManualMask" / "leftMask" / name)
        save_as(right, root / "ManualMask" / "rightMask" / name)
        expected[name.removesuffix(".png")] = (left, right)
    return expected


@pytest.mark.parametrize("scale", [1, 16, 257], ids=["8-bit", "12-bit", "16-bit"])
def test_montgomery_lungs_get_the_patients_sides(tmp_path: Path, scale: int) -> None:
    """The adapter declares PA films in radiological display: every left lung is the
    patient's left, every right lung the patient's right (found from the mediastinum:
    these films are cropped to the thorax, so no body outline is seen whole). Films of
    more than 8 bits are read at their own depth (not clipped at 255: white)."""
    root = tmp_path / "MontgomerySet"
    expected = _arrange_montgomery(root)
    if scale > 1:
        for film in (root / "CXR_png").glob("*.png"):
            grey = np.asarray(Image.open(film)).astype(np.uint16)
            Image.fromarray(grey * np.uint16(scale)).save(film)
            assert Image.open(film).mode.startswith("I")
    source = REGISTRY["montgomery"]
    cases = [c for c in source.discover(root) if isinstance(c, Case)]
    assert len(cases) == len(expected)
    for case in cases:
        (image,) = extract_case(case, SourceMeta.of(source))
        sides = {t.target: t.patient_side for t in image.targets}
        assert sides == {"left lung": "left", "right lung": "right"}, case.case_id


def test_merged_lung_field_is_bilateral_and_each_lung_on_its_side(tmp_path: Path) -> None:
    """Both lungs in one mask (two components): with the display declared the lung field
    is bilateral, and a referring row's single lung is on its own side; undeclared, or
    declared lateral, no side at all."""
    spec = {
        "name": "cxr_lungs",
        "modality": "xray",
        "target": "lung field",
        "images": "Data/*.jpg",
        "masks": "Data/{stem}-mask.png",
        "display": "radiological",
        "projection": "pa",
    }
    built = run_build(tmp_path, (write_spec(tmp_path, spec), MONTGOMERY))
    assert built.counts("cxr_lungs") == (4, 4, 0, 0)
    referring = 0
    for row in built.rows:
        if row["question_type"] == "negative":
            continue
        if row["question_type"] != "referring" or row["n_components"] == 2:
            assert row["patient_side"] == "bilateral", row["row_id"]
            continue
        referring += 1
        # one lung: the patient's left lies on the image's right
        assert row["patient_side"] == ("left" if row["centroid"][0] > 0.5 else "right")
    assert referring == 4
    laterality = [r for r in built.rows if r["question_type"] == "laterality"]
    assert laterality and all("both sides" in r["answer"] for r in laterality)
    for declared in ({"projection": "lateral"}, {"display": "none", "projection": None}):
        other_spec = {k: v for k, v in {**spec, **declared}.items() if v is not None}
        other = write_spec(tmp_path, {**other_spec, "name": "cxr_other"})
        for case in other.discover(MONTGOMERY):
            assert isinstance(case, Case)
            (image,) = extract_case(case, SourceMeta.of(other))
            assert [t.patient_side for t in image.targets] == [None]
