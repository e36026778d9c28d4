"""Bad input: every case is counted, reported with file and reason, never dropped."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.build.run import BuildConfig, BuildError, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.demo import write_kvasir
from pipeline.sources import REGISTRY
from pipeline.sources.spec import load_spec


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    """A Kvasir-SEG folder with one of every kind of bad case beside good ones."""
    folder = write_kvasir(tmp_path, 6, size=(80, 64))
    images, masks = folder / "images", folder / "masks"
    data = (images / "demo00000.jpg").read_bytes()
    (images / "demo00000.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (images / "demo00001.jpg").write_bytes(b"not an image at all")  # corrupt
    Image.new("L", (40, 30)).save(masks / "demo00002.jpg")  # size mismatch (and empty)
    Image.new("L", (80, 64)).save(masks / "demo00003.jpg")  # empty mask
    (masks / "orphan.jpg").write_bytes((masks / "demo00004.jpg").read_bytes())  # mask, no image
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(images / "lonely.jpg")  # no mask
    return folder


def _config(folder: Path, out: Path, strict: bool = False) -> BuildConfig:
    return BuildConfig(
        (SourceRequest(REGISTRY["kvasir_seg"], folder),), out, strict=strict, progress=False
    )


def test_discovery_pairs_by_stem_in_name_order_and_reports_every_unpaired_file(
    tmp_path: Path,
) -> None:
    from pipeline.sources.base import Case, MaskFile, Problem, files, image_files, pair_by_stem

    images, masks = tmp_path / "images", tmp_path / "masks"
    for folder, names in ((images, ["b.png", "a.jpg", "a.png", "c.JPG", "notes.txt"]),
                          (masks, ["a.png", "b.png", "zz.png", "y_mask.png"])):  # fmt: skip
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
    (images / "folder.png").mkdir()  # not a file

    listed = image_files(images)
    assert list(listed) == [images / n for n in ("a.jpg", "a.png", "b.png", "c.JPG")]
    assert listed[1:3] == [images / "a.png", images / "b.png"] and len(listed) == 4
    assert list(files(masks, "*_mask.png")) == [masks / "y_mask.png"]

    def case(image: Path, mask: Path) -> Case:
        return Case("s", image.name, image.name, image, (MaskFile(mask, "t"),))

    found = [
        (item.image.name, item.masks[0].path.name) if isinstance(item, Case)
        else (item.file.name, item.reason) if isinstance(item, Problem) else item
        for item in pair_by_stem("s", listed, image_files(masks), case)
    ]  # fmt: skip
    assert found == [
        ("a.jpg", "a.png"),  # two images of one stem share its mask, as each pairs by stem
        ("a.png", "a.png"),
        ("b.png", "b.png"),
        ("c.JPG", "image has no mask"),
        ("y_mask.png", "mask has no image"),
        ("zz.png", "mask has no image"),
    ]


def test_bad_cases_are_reported_and_counted(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = build(_config(broken, out))
    counts = summary.sources["kvasir_seg"]
    assert counts.discovered == 8
    assert (counts.converted, counts.skipped, counts.failed) == (2, 4, 2)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    by_file = {e["file"]: e for e in errors}
    assert len(errors) == counts.skipped + counts.failed
    assert by_file["images/demo00000.jpg"]["status"] == "failed"
    assert "cannot decode" in by_file["images/demo00000.jpg"]["reason"]
    assert by_file["images/demo00001.jpg"]["status"] == "failed"
    assert "size mismatch" in by_file["images/demo00002.jpg"]["reason"]
    assert "empty mask" in by_file["images/demo00003.jpg"]["reason"]
    assert by_file["masks/orphan.jpg"]["reason"] == "mask has no image"
    assert by_file["images/lonely.jpg"]["reason"] == "image has no mask"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kvasir_seg"]["failed"] == 2
    assert validate(out).ok


def test_strict_stops_at_the_first_bad_case(broken: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(BuildError, match="demo00000.jpg: .*cannot decode.*--strict"):
        build(_config(broken, out, strict=True))
    assert not out.exists()
    assert not list(tmp_path.glob(".strict*"))  # no staging left behind


def test_wrong_layout_and_missing_root_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="does not exist"):
        build(_config(tmp_path / "nowhere", tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError, match=r"expected layout: Kvasir-SEG/images/<id>\.jpg"):
        build(_config(tmp_path / "empty", tmp_path / "out"))


def _built(tmp_path: Path, cases: int = 3) -> Path:
    """A built Kvasir-SEG folder of `cases` 90x90 demo cases."""
    out = tmp_path / "out"
    build(_config(write_kvasir(tmp_path, cases, size=(90, 90)), out))
    return out


def _shard(out: Path, split: str = "") -> Path:
    return sorted((out / "data").glob(f"{split}*.parquet"))[0]


def _edit_rows(shard: Path, edit: Callable[[list[dict]], None]) -> list[dict]:
    """Rewrite a shard with its rows as `edit` changes them; returns the edited rows."""
    import pyarrow.parquet as pq

    table = pq.read_table(shard)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard)
    return rows


def test_a_tampered_answer_fails_validation(tmp_path: Path) -> None:
    out = _built(tmp_path)

    def tamper(rows: list[dict]) -> None:
        row = next(r for r in rows if r["question_type"] == "position")
        wrong = "lower right" if row["zone"] != "lower right" else "upper left"
        row["answer"] = row["answer"].replace(row["zone"], wrong)

    _edit_rows(_shard(out), tamper)
    result = validate(out)
    assert not result.ok
    assert any("states zone" in v for v in result.violations)


def test_a_shard_rewritten_with_the_same_rows_fails_its_hash(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = _built(tmp_path)
    shard = _shard(out)
    pq.write_table(pq.read_table(shard), shard, compression="gzip")  # same rows, other bytes
    result = validate(out)
    assert result.violations == [f"{shard.name}: content differs from the manifest's hash"]


def test_an_image_swapped_for_another_fails_its_hash_and_size(tmp_path: Path) -> None:
    out = _built(tmp_path)
    other = io.BytesIO()
    Image.new("RGB", (60, 40), "white").save(other, format="JPEG")

    def swap(rows: list[dict]) -> None:
        swapped = rows[0]["image_id"]
        for row in rows:
            if row["image_id"] == swapped:
                row["image"]["bytes"] = other.getvalue()

    shard = _shard(out)
    rows = _edit_rows(shard, swap)
    result = validate(out)
    label = f"{shard.name} row {rows[0]['row_id']}"
    assert f"{label}: image_id is not the SHA-256 of the image bytes" in result.violations
    assert f"{label}: mask (90, 90) and image (60, 40) differ" in result.violations


def test_keys_in_several_splits_are_found_exactly_whatever_their_bytes() -> None:
    """Cross-split keys are fixed-size bytes: one that ends in zero bytes, or is all zero,
    is kept and compared whole."""
    from pipeline.checks.folder import _in_several
    from pipeline.checks.shard import merged, packed, unpacked

    zero, tail, other = bytes(16), b"\x07" * 15 + b"\x00", b"\x07" * 16
    assert unpacked(packed([other, tail, zero, tail])) == [zero, tail, other]
    assert merged([packed([tail]), packed([zero, tail])]) == packed([zero, tail])
    runs = {
        "train": [packed([tail, other]), packed([zero])],
        "validation": [packed([other])],
        "test": [packed([zero]), packed([tail])],
    }
    assert _in_several(runs) == [
        (zero, ["test", "train"]),
        (tail, ["test", "train"]),
        (other, ["train", "validation"]),
    ]
    assert _in_several({"train": [packed([zero, tail])], "test": [b""]}) == []


def test_a_patient_or_image_in_two_splits_fails_validation(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = _built(tmp_path, cases=8)
    train = pq.read_table(_shard(out, "train")).to_pylist()[0]

    def move(rows: list[dict]) -> None:
        moved = rows[0]["image_id"]
        for row in rows:
            if row["image_id"] == moved:  # this image's rows now show a train patient's image
                row["patient_id"] = train["patient_id"]
                row["image"], row["image_id"] = train["image"], train["image_id"]

    _edit_rows(_shard(out, "validation"), move)
    result = validate(out)
    patient = f"kvasir_seg/{train['patient_id']}"
    assert f"patient leakage: {patient} is in ['train', 'validation']" in result.violations
    image = train["image_id"][:16]
    assert f"identical image {image} is in ['train', 'validation']" in result.violations


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


def test_reasons_are_the_same_every_run_and_name_the_bad_file(
    broken: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No object address, no path of this machine; a bad mask is reported as the mask."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 80x64 pass, over twice that: a bomb
    Image.new("L", (200, 100)).save(broken / "masks" / "demo00004.jpg")  # a decompression bomb
    runs, manifests = [], []
    for name in ("first", "second"):
        build(_config(broken, tmp_path / name))
        runs.append((tmp_path / name / "errors.jsonl").read_text())
        manifests.append((tmp_path / name / "manifest.json").read_text())
    assert runs[0] == runs[1] and manifests[0] == manifests[1]
    assert str(tmp_path) not in runs[0] and not re.search("0x[0-9a-fA-F]{6}", runs[0])
    by_file = {e["file"]: e for e in _errors(tmp_path / "first")}
    assert by_file["images/demo00001.jpg"]["reason"] == (
        "cannot decode image (not a known image format)"
    )
    bomb = by_file["masks/demo00004.jpg"]
    assert (bomb["case_id"], bomb["status"]) == ("demo00004", "failed")
    assert "decompression bomb" in bomb["reason"]


def test_links_that_lead_nowhere_are_counted_and_reported(tmp_path: Path) -> None:
    folder = write_kvasir(tmp_path, 3, size=(80, 64))
    (folder / "images" / "loop.jpg").symlink_to("loop.jpg")
    (folder / "images" / "gone.jpg").symlink_to("nowhere.jpg")
    (folder / "masks" / "demo00001.jpg").unlink()
    (folder / "masks" / "demo00001.jpg").symlink_to("../masks/demo00001.jpg")
    (folder / "images" / "elsewhere.jpg").symlink_to(folder / "images" / "demo00002.jpg")
    (folder / "masks" / "elsewhere.jpg").symlink_to(folder / "masks" / "demo00002.jpg")
    out = tmp_path / "out"
    counts = build(_config(folder, out)).sources["kvasir_seg"]
    by_file = {e["file"]: e["reason"] for e in _errors(out)}
    assert by_file == {
        "images/gone.jpg": "dangling symbolic link (its target does not exist)",
        "images/loop.jpg": "symbolic link loop (following it never reaches a file)",
        "masks/demo00001.jpg": "symbolic link loop (following it never reaches a file)",
        "images/demo00001.jpg": "image has no mask",
        # a link to a file is followed: the same image as demo00002, left out as such
        "images/elsewhere.jpg": "identical image already converted as kvasir_seg/demo00002",
    }
    assert (counts.discovered, counts.converted, counts.skipped) == (7, 2, 5)


def test_a_folder_tree_with_link_loops_is_walked_once_each(tmp_path: Path) -> None:
    from pipeline.sources.base import walk

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "up").symlink_to("../..")
    (tmp_path / "a" / "self").symlink_to("self")
    (tmp_path / "link").symlink_to("a")
    assert [p.relative_to(tmp_path).as_posix() for p in walk(tmp_path)] == [".", "a", "a/b"]


def test_a_newline_in_a_file_name_keeps_its_pair(tmp_path: Path) -> None:
    from pipeline.demo import write_busi

    folder = write_busi(tmp_path, 2, size=(60, 40))
    for path in sorted((folder / "benign").iterdir()):
        path.rename(path.with_name(path.name.replace("benign ", "benign\nscan ")))
    found = list(REGISTRY["busi"].discover(folder))
    assert [(type(f).__name__, f.case_id) for f in found] == [
        ("Case", "benign\nscan (1)"),
        ("Case", "malignant (2)"),
    ]
    assert [m.path.name for m in found[0].masks] == [
        "benign\nscan (1)_mask.png",
        "benign\nscan (1)_mask_1.png",
    ]


def _ct_build(root: Path, out: Path):
    """A CT spec source of root's images/ and labels/ (every slice, no negatives), built."""
    spec = root / "ct.yaml"
    spec.write_text(
        "name: ct\nmodality: ct\nimages: images/*.nii.gz\nmasks: labels/{name}\n"
        "labels: {1: lesion}\nwindow: abdomen\nslices: {mode: all, negatives: 0}\n"
    )
    return build(BuildConfig((SourceRequest(load_spec(spec), root),), out, progress=False))


def test_slices_shared_by_two_series_are_left_out_and_reported(tmp_path: Path) -> None:
    """Like identical images: each slice identical to one converted before is left out
    (reported with its slice), a series whose every slice was converted is skipped."""
    pytest.importorskip("SimpleITK")
    import phantoms
    import pyarrow.parquet as pq

    image, labels = phantoms.phantom_arrays()
    hu = (image - 200).astype(np.int16)  # the body at 200 HU: grey in the abdomen window
    changed = hu.copy()
    changed[17:] += 20  # p2 shares p1's slices below 17 (the lesion spans 13..20)
    for name, volume in (("p1", hu), ("p2", changed), ("p3", hu)):
        phantoms.write_case(tmp_path, volume, labels, name)
    out = tmp_path / "out"
    summary = _ct_build(tmp_path, out)
    counts = summary.sources["ct"]
    assert (counts.converted, counts.skipped) == (2, 1)
    errors = _errors(out)
    assert errors[-1] == {
        "source": "ct",
        "case_id": "images/p3",
        "file": "images/p3.nii.gz",
        "status": "skipped",
        "reason": "identical image already converted as ct/images/p1",
    }
    shared = [e for e in errors if e["case_id"] == "images/p2"]
    assert [e["slice_index"] for e in shared] == [13, 14, 15, 16]
    assert {(e["slice_axis"], e["status"], e["reason"]) for e in shared} == {
        ("axial", "skipped", "identical image already converted as ct/images/p1")
    }
    rows = [r for s in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(
        s, columns=["case_id", "image_id", "slice_index"]).to_pylist()]  # fmt: skip
    p2 = sorted({r["slice_index"] for r in rows if r["case_id"] == "images/p2"})
    assert p2 == [17, 18, 19, 20]
    cases_of: dict[str, set[str]] = {}
    for row in rows:
        cases_of.setdefault(row["image_id"], set()).add(row["case_id"])
    assert all(len(cases) == 1 for cases in cases_of.values())
    assert validate(out).ok


def test_slices_of_one_volume_with_the_same_image_keep_the_first(tmp_path: Path) -> None:
    """Slices whose windowed image is the same (repeated slices, a constant region): one
    image, one set of rows, the first slice's; each later one reported with its slice."""
    pytest.importorskip("SimpleITK")
    import phantoms
    import pyarrow.parquet as pq

    image, labels = phantoms.phantom_arrays()
    hu = (image - 200).astype(np.int16)
    hu[15] = hu[16] = hu[14]  # the lesion spans slices 13..20
    phantoms.write_case(tmp_path, hu, labels)
    out = tmp_path / "out"
    summary = _ct_build(tmp_path, out)
    assert (summary.sources["ct"].converted, summary.images) == (1, 6)
    reason = "identical image already converted as ct/images/p1 (slice 14)"
    reported = [(e["slice_axis"], e["slice_index"], e["status"], e["reason"]) for e in _errors(out)]
    assert reported == [("axial", index, "skipped", reason) for index in (15, 16)]
    rows = [r for s in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(
        s, columns=["row_id", "slice_index"]).to_pylist()]  # fmt: skip
    assert sorted({r["slice_index"] for r in rows}) == [13, 14, 17, 18, 19, 20]
    assert len({r["row_id"] for r in rows}) == len(rows)
    assert validate(out).ok
