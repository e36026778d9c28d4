"""The generic YAML source: keys, errors, several masks per image, label maps, display."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.sources import Case, Problem, SpecError, load_spec


def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


BASE = """
name: phantoms
modality: ct
images: "images/*.png"
"""


def _rows(out: Path) -> list[dict]:
    return [
        r for s in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(s).to_pylist()
    ]


def _write(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "missing key"),
        (BASE + 'masks: "m/{stem}.png"\ncolour: red\n', "unknown key"),
        (BASE + 'masks: "m/{stem}.png"\n', "give target, target_regex or labels"),
        (BASE + 'masks: "m/{stem}.png"\ntarget: t\ntarget_regex: "(x"\n', "not a valid regex"),
        (BASE + 'masks: "m/{stem}.png"\ntarget: t\ntarget_regex: "x"\n', "named group"),
        (BASE + 'masks: "m/{stem}.png"\ntarget: t\ndisplay: sideways\n', "display"),
        (BASE + 'masks: "m/{stem}.png"\nlabels: {0: bg}\n', "background"),
        ("name: Bad Name\nmodality: ct\nimages: a\nmasks: b\ntarget: t\n", r"\[a-z0-9_\]"),
        ("name: x\nmodality: pet\nimages: a\nmasks: b\ntarget: t\n", "modality"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_specs_name_the_file_and_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises((SpecError, ValueError), match=message):
        load_spec(_spec(tmp_path, text))


def test_globs_that_leave_the_data_root_are_refused_with_the_reason(tmp_path: Path) -> None:
    """Absolute globs, and '..' that can climb above the data root (also through '**', which
    may match no folder, and through {parent} for an image at the root), are refused before
    any file outside is listed; '..' that stays inside is followed."""
    root = tmp_path / "data"
    pixels = np.zeros((8, 8), np.uint8)
    pixels[2:5, 2:5] = 255
    for folder in ("images", "masks"):
        _write(root / "site" / folder / "a.png", pixels)
    _write(root / "b.png", pixels)
    _write(tmp_path / "outside" / "a.png", pixels)  # what a glob that climbs would read
    _write(tmp_path / "masks" / "c.png", pixels)  # "**/../masks" with "**" as no folder
    refused = {
        'images: "/etc/*"\nmasks: "m/{stem}.png"': "images '/etc/\\*' is absolute",
        'images: "../../../etc/*"\nmasks: "m/{stem}.png"': "leaves the data root",
        'images: "**/../*.png"\nmasks: "m/{stem}.png"': "leaves the data root",
        'images: "*.png"\nmasks: "../outside/{stem}.png"': "masks .* leaves the data root",
        'images: "*.png"\nmasks: "/tmp/{stem}.png"': "is absolute",
        'images: "*.png"\nmasks: "m/{stem}_{side}.png"': "only {stem}, {name} and {parent}",
    }
    for keys, message in refused.items():
        text = f"name: x\nmodality: ct\ntarget: t\n{keys}\n"
        with pytest.raises(SpecError, match=message):
            load_spec(_spec(tmp_path, text))
    nested = 'masks: "{parent}/../masks/{stem}.png"\n'
    spec = load_spec(
        _spec(tmp_path, f'name: x\nmodality: ct\ntarget: t\nimages: "*/images/*.png"\n{nested}')
    )
    [case] = spec.discover(root)
    assert case.masks[0].path == root / "site" / "masks" / "a.png"
    assert list(spec.discover(root)) == [case]  # the unclaimed-mask glob stays inside too
    at_root = load_spec(
        _spec(tmp_path, f'name: x\nmodality: ct\ntarget: t\nimages: "*.png"\n{nested}')
    )
    with pytest.raises(SpecError, match="leaves the data root for image b.png"):
        list(at_root.discover(root))


def test_several_mask_files_per_image_and_their_targets(tmp_path: Path) -> None:
    root = tmp_path / "data"
    canvas = np.zeros((60, 60), np.uint8)
    _write(root / "images" / "p1_a.png", canvas)
    _write(root / "images" / "p1_b.png", canvas)
    one, two, organ = canvas.copy(), canvas.copy(), canvas.copy()
    one[2:10, 2:10] = 255
    two[50:58, 50:58] = 255
    organ[20:40, 20:40] = 255
    for image in ("p1_a", "p1_b"):
        _write(root / "masks" / f"{image}_lesion_000.png", one)
        _write(root / "masks" / f"{image}_lesion_001.png", two)
        _write(root / "masks" / f"{image}_left_kidney_000.png", organ)
    _write(root / "masks" / "ghost_lesion_000.png", one)
    spec = load_spec(
        _spec(
            tmp_path,
            BASE
            + (
                'masks: "masks/{stem}_*.png"\n'
                'target_regex: "^{stem}_(?P<target>.+)_\\\\d{3}$"\n'
                'patient_id_regex: "(?P<patient_id>p\\\\d+)_"\n'
            ),
        )
    )
    found = list(spec.discover(root))
    cases = [c for c in found if isinstance(c, Case)]
    assert [c.case_id for c in cases] == ["images/p1_a", "images/p1_b"]
    assert {c.patient_id for c in cases} == {"p1"}
    assert set(cases[0].targets) == {"lesion", "left kidney"}
    assert [p.file.name for p in found if isinstance(p, Problem)] == ["ghost_lesion_000.png"]

    out = tmp_path / "out"
    build(BuildConfig((SourceRequest(spec, root),), out, progress=False))
    rows = _rows(out)
    lesion = [r for r in rows if r["target"] == "lesion" and r["question_type"] == "count"]
    assert lesion and all(r["n_components"] == 2 for r in lesion)  # two files, one target
    assert len({r["split"] for r in rows}) == 1  # one patient, one split
    whole = {
        (r["case_id"], r["target"]): r["mask"]["bytes"]
        for r in rows
        if r["question_type"] == "count"
    }
    kidney = (root / "masks" / "p1_a_left_kidney_000.png").read_bytes()
    assert whole[("images/p1_a", "left kidney")] == kidney  # one 0/255 PNG: kept as it is
    assert whole[("images/p1_a", "lesion")] not in (  # two files: their union, encoded
        (root / "masks" / "p1_a_lesion_000.png").read_bytes(),
        (root / "masks" / "p1_a_lesion_001.png").read_bytes(),
    )
    assert validate(out).ok


def test_label_maps_give_one_target_per_value(tmp_path: Path) -> None:
    root = tmp_path / "data"
    labels = np.zeros((50, 50), np.uint8)
    labels[5:15, 5:15] = 1
    _write(root / "images" / "a.png", np.full((50, 50), 80, np.uint8))
    _write(root / "labels" / "a.png", labels)
    spec = load_spec(
        _spec(
            tmp_path,
            BASE + ('masks: "labels/{stem}.png"\nlabels: {1: liver, 2: tumor}\nnegatives: true\n'),
        )
    )
    out = tmp_path / "out"
    build(BuildConfig((SourceRequest(spec, root),), out, progress=False))
    rows = _rows(out)
    assert {r["question_type"] for r in rows if r["target"] == "tumor"} == {"negative"}
    liver = [r for r in rows if r["target"] == "liver" and r["question_type"] == "position"]
    assert liver[0]["zone"] == "upper left"
    assert validate(out).ok


def test_declared_display_is_turned_before_facts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    image = np.zeros((40, 60), np.uint8)
    image[5:15, 5:15] = 200
    _write(root / "images" / "a.png", image)
    _write(root / "masks" / "a.png", (image > 0).astype(np.uint8) * 255)
    # Neurological axial display: the patient's right on the image right, so the lesion
    # drawn on the image left is on the patient's left and belongs on the image right.
    spec = load_spec(
        _spec(
            tmp_path,
            BASE
            + (
                'masks: "masks/{stem}.png"\ntarget: lesion\n'
                "display: {right: right, down: posterior}\n"
            ),
        )
    )
    out = tmp_path / "out"
    build(BuildConfig((SourceRequest(spec, root),), out, progress=False))
    rows = _rows(out)
    assert rows and all(
        r["zone"] == "upper right" for r in rows if r["question_type"] == "position"
    )
    stored = rows[0]["image"]["bytes"]
    assert stored.startswith(b"\x89PNG")  # transformed pixels are re-encoded
    assert validate(out).ok


def test_split_regex_keeps_official_splits(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mask = np.zeros((20, 20), np.uint8)
    mask[2:8, 2:8] = 255
    for split in ("Train", "Val", "Test"):
        _write(root / split / "img" / f"{split}1.png", np.full((20, 20), 50, np.uint8))
        _write(root / split / "gt" / f"{split}1.png", mask)
    spec = load_spec(
        _spec(
            tmp_path,
            (
                "name: splits\nmodality: mri\ntarget: lesion\n"
                'images: "*/img/*.png"\nmasks: "{parent}/../gt/{name}"\n'
                'split_regex: "^(?P<split>Train|Val|Test)/"\n'
            ),
        )
    )
    cases = [c for c in spec.discover(root) if isinstance(c, Case)]
    assert {c.case_id.split("/")[0]: c.official_split for c in cases} == {
        "Train": "train",
        "Val": "validation",
        "Test": "test",
    }


def test_images_that_are_links_to_nowhere_are_problems(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "a" / "x.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "masks" / "x.png", np.full((8, 8), 255, np.uint8))
    (tmp_path / "images" / "a" / "loop.png").symlink_to("loop.png")
    (tmp_path / "images" / "a" / "gone.png").symlink_to("../nowhere.png")
    spec = _spec(tmp_path, 'name: s\nmodality: ct\nimages: "images/*/*.png"\n'
                 'masks: "masks/{name}"\ntarget: t\n')  # fmt: skip
    found = list(load_spec(spec).discover(tmp_path))
    assert [(f.case_id, f.reason) for f in found if isinstance(f, Problem)] == [
        ("images/a/gone", "dangling symbolic link (its target does not exist)"),
        ("images/a/loop", "symbolic link loop (following it never reaches a file)"),
    ]
    assert [f.case_id for f in found if isinstance(f, Case)] == ["images/a/x"]


def test_an_image_that_is_a_problem_reports_its_masks_with_it(tmp_path: Path) -> None:
    """A case refused at discovery (here: no patient id) is one problem, its mask no
    second one ("mask has no image"); a mask without any image still is one."""
    for name in ("P1_a", "b", "orphan"):
        if name != "orphan":
            _write(tmp_path / "images" / f"{name}.png", np.zeros((8, 8), np.uint8))
        _write(tmp_path / "masks" / f"{name}.png", np.full((8, 8), 255, np.uint8))
    spec = _spec(tmp_path, 'name: s\nmodality: ct\nimages: "images/*.png"\n'
                 'masks: "masks/{stem}.png"\ntarget: t\n'
                 'patient_id_regex: "^images/(?P<patient_id>P\\\\d+)_"\n')  # fmt: skip
    found = list(load_spec(spec).discover(tmp_path))
    assert [f.case_id for f in found if isinstance(f, Case)] == ["images/P1_a"]
    assert [(f.case_id, f.reason) for f in found if isinstance(f, Problem)] == [
        ("images/b", "patient_id_regex does not match the image path"),
        ("orphan", "mask has no image"),
    ]


def test_masks_that_images_matches_too_are_named_as_such(tmp_path: Path) -> None:
    """Masks beside their images, and an `images` glob that takes them too: each is one
    problem that says what it is and how to leave it out."""
    _write(tmp_path / "imgs" / "a.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "imgs" / "a_mask.png", np.full((8, 8), 255, np.uint8))
    spec = _spec(tmp_path, 'name: s\nmodality: ct\nimages: "imgs/*.png"\n'
                 'masks: "imgs/{stem}_mask.png"\ntarget: t\n')  # fmt: skip
    found = list(load_spec(spec).discover(tmp_path))
    assert [f.case_id for f in found if isinstance(f, Case)] == ["imgs/a"]
    assert [(f.case_id, f.reason) for f in found if isinstance(f, Problem)] == [
        ("imgs/a_mask", "a mask of another image, matched by `images` too (leave it out: exclude)")
    ]
