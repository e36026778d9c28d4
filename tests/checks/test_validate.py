"""validate catches edits: each test tampers with a built folder and checks the violation named.

Edits made "consistently" also update the manifest's hash of the file edited, as someone
who knows the format would: what is left to catch them is what validate re-derives.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build.run import BuildConfig, SourceRequest, build
from pipeline.checks.folder import validate
from pipeline.demo import write_busi, write_kvasir
from pipeline.sources import REGISTRY
from pipeline.store import file_digest


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("validate")
    write_kvasir(root, 6, size=(90, 72))
    write_busi(root, 5, size=(90, 72))
    sources = (
        SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),
        SourceRequest(REGISTRY["busi"], root / "Dataset_BUSI_with_GT"),
    )
    out = root / "out"
    build(BuildConfig(sources, out, progress=False, batch_size=4))
    assert validate(out).ok
    return out


@pytest.fixture()
def folder(built: Path, tmp_path: Path) -> Path:
    """A copy of the build to tamper with."""
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    return copy


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _rehash(folder: Path, *names: str) -> None:
    """Update the manifest's hashes of the files named, as a careful tamperer would."""
    manifest = _manifest(folder)
    for name in names:
        manifest["files"][name] = file_digest(folder / name)
    _write_manifest(folder, manifest)


def _edit_rows(folder: Path, question_type: str, edit: Callable[[dict], None]) -> tuple[str, str]:
    """Edit the first row of a question type in place (its shard rewritten, manifest
    rehashed); returns the shard's name and the row's id."""
    for shard in sorted((folder / "data").glob("*.parquet")):
        table = pq.read_table(shard)
        rows = table.to_pylist()
        index = next((i for i, r in enumerate(rows) if r["question_type"] == question_type), None)
        if index is None:
            continue
        edit(rows[index])
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)
        _rehash(folder, f"data/{shard.name}")
        return shard.name, rows[index]["row_id"]
    raise AssertionError(f"no {question_type} row")


def test_an_appended_duplicate_row_is_named(folder: Path) -> None:
    shard = sorted((folder / "data").glob("train-*.parquet"))[0]
    table = pq.read_table(shard)
    row_id = table.column("row_id")[0].as_py()
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), shard)
    result = validate(folder)
    assert f"{shard.name} row {row_id}: row_id appears twice" in result.violations
    assert f"{shard.name}: content differs from the manifest's hash" in result.violations
    _rehash(folder, f"data/{shard.name}")  # the hash updated: the duplicate is still named
    result = validate(folder)
    assert f"{shard.name} row {row_id}: row_id appears twice" in result.violations


def test_a_row_copied_into_another_shard_is_named(folder: Path) -> None:
    first, second = sorted((folder / "data").glob("train-*.parquet"))[:2]
    source, target = pq.read_table(first), pq.read_table(second)
    row_id = source.column("row_id")[0].as_py()
    pq.write_table(pa.concat_tables([target, source.slice(0, 1).cast(target.schema)]), second)
    _rehash(folder, f"data/{second.name}")
    result = validate(folder)
    assert f"row {row_id}: row_id appears in several shards" in result.violations


def test_a_negation_inserted_into_a_position_answer_is_named(folder: Path) -> None:
    def negate(row: dict) -> None:
        row["answer"] = f"The {row['zone']} of the image does not contain the {row['target']}."

    shard, row_id = _edit_rows(folder, "position", negate)
    result = validate(folder)
    assert any(
        v.startswith(f"{shard} row {row_id} (") and "answer negates ('not')" in v
        for v in result.violations
    ), result.violations


def test_a_foreign_structure_in_an_answer_is_named(folder: Path) -> None:
    def liver(row: dict) -> None:
        row["answer"] = f"The {row['zone']} region of the image contains the liver."

    shard, row_id = _edit_rows(folder, "position", liver)
    result = validate(folder)
    assert any(
        v.startswith(f"{shard} row {row_id} (") and "names ['liver']" in v
        for v in result.violations
    ), result.violations


def test_an_options_text_changed_under_its_letter_is_named(folder: Path) -> None:
    changed = {}

    def retext(row: dict) -> None:
        wrong = next(o for o in row["options"] if o != row["zone"])
        changed["zone"] = row["zone"]
        row["question"] = row["question"].replace(f") {row['zone']}", f") {wrong}")

    shard, row_id = _edit_rows(folder, "multiple_choice", retext)
    result = validate(folder)
    assert any(
        v.startswith(f"{shard} row {row_id} (") and "question offers" in v
        for v in result.violations
    ), result.violations


@pytest.mark.parametrize("name", ["README.md", "report.json", "errors.jsonl", "plots"])
def test_the_records_beside_the_shards_are_checked_against_their_hashes(
    folder: Path, name: str
) -> None:
    path = folder / name
    if name == "plots":
        path = sorted(path.iterdir())[0]
        name = f"plots/{path.name}"
    path.write_bytes(path.read_bytes() + b"\n")
    violations = validate(folder).violations  # an edited errors.jsonl also reads wrong
    assert violations[0] == f"{name}: content differs from the manifest's hash"
    assert violations[1:] in ([], ["errors.jsonl line 1: not an entry of a skipped or failed case"])


def test_files_missing_or_added_are_named(folder: Path) -> None:
    plot = sorted((folder / "plots").iterdir())[0]
    plot.unlink()
    (folder / "notes.txt").write_text("added")
    (folder / ".gitattributes").write_text("*.parquet filter=lfs\n")  # a Hub download's
    assert validate(folder).violations == [
        "notes.txt: not in the manifest",
        f"plots/{plot.name}: in the manifest, missing from the folder",
    ]


def test_the_records_must_agree_with_the_manifest(folder: Path) -> None:
    report = json.loads((folder / "report.json").read_text())
    report["rows"] += 1
    (folder / "report.json").write_text(json.dumps(report))
    with (folder / "errors.jsonl").open("a") as handle:
        handle.write(json.dumps({"source": "busi", "status": "failed", "reason": "x"}) + "\n")
    card = (folder / "README.md").read_text()
    shard = _manifest(folder)["shards"][0]["path"]
    (folder / "README.md").write_text(card.replace(f"    - {shard}\n", "", 1))
    _rehash(folder, "report.json", "errors.jsonl", "README.md")
    failed = _manifest(folder)["counts"]["busi"]["failed"]
    violations = validate(folder).violations
    assert violations[:2] == [
        f"errors.jsonl lists {failed + 1} failed cases of busi; the manifest counts {failed}",
        "report.json: rows differs from the manifest's",
    ]
    assert len(violations) == 3 and violations[2].startswith("README.md: the default config lists")


def test_the_manifests_counts_are_checked_against_the_shards(folder: Path) -> None:
    manifest = _manifest(folder)
    rows = manifest["counts"]["kvasir_seg"]["rows"]
    manifest["counts"]["kvasir_seg"]["rows"] += 2
    manifest["counts"]["busi"]["rows"] -= 2  # the total stays
    manifest["images"] += 1
    _write_manifest(folder, manifest)
    violations = validate(folder).violations
    assert f"manifest counts {rows + 2} rows of kvasir_seg, the shards hold {rows}" in violations
    assert any(v.startswith("manifest counts") and "images, the shards hold" in v
               for v in violations)  # fmt: skip


def test_the_manifests_licences_and_modalities_are_checked_against_the_shards(
    folder: Path,
) -> None:
    manifest = _manifest(folder)
    source = next(s for s in manifest["config"]["sources"] if s["name"] == "busi")
    licence = source["license"]
    source["license"] = "CC0"
    shard = next(s for s in manifest["shards"] if s["source"] == "kvasir_seg")
    shard["source"] = "busi"
    _write_manifest(folder, manifest)
    violations = validate(folder).violations
    assert any(f"rows of busi under licence {licence!r}; the manifest says 'CC0'" in v
               for v in violations)  # fmt: skip
    assert any(v.startswith(f"{shard['path']}: ") and "rows of kvasir_seg/endoscopy" in v
               for v in violations)  # fmt: skip


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "manifest.json: not JSON"),
        ("[]", "manifest.json: the document must be dict, not list"),
        ('{"format": "mmrs/1"}', "manifest.json: config must be dict, not NoneType"),
    ],
)
def test_a_garbage_manifest_is_one_clear_violation(
    folder: Path, content: str, expected: str
) -> None:
    (folder / "manifest.json").write_text(content)
    result = validate(folder)
    assert len(result.violations) == 1 and result.violations[0].startswith(expected)


def test_a_manifest_that_names_paths_outside_the_folder_is_refused(folder: Path) -> None:
    manifest = _manifest(folder)
    manifest["files"]["../../etc/passwd"] = "0" * 64
    _write_manifest(folder, manifest)
    assert validate(folder).violations == [
        "manifest.json: files '../../etc/passwd' is not a path inside the folder"
    ]
    manifest["files"].pop("../../etc/passwd")
    manifest["counts"]["busi"]["rows"] = "many"
    _write_manifest(folder, manifest)
    assert validate(folder).violations == ["manifest.json: counts.busi.rows must be int, not str"]


def _set(**values: object) -> Callable[[dict], None]:
    def edit(row: dict) -> None:
        for key, value in values.items():
            row[key] = value.format(**row) if isinstance(value, str) else value

    return edit


@pytest.mark.parametrize(
    ("question_type", "edit", "named"),
    [
        # a false count under a type no family checks
        ("count", _set(question_type="counting", answer="There are seven."),
         "unknown question_type 'counting'"),
        ("count", _set(question_type=None, answer="There are seven."),
         "unknown question_type None"),
        # a negative row (empty mask) whose answer asserts the target after all
        ("negative", _set(answer="Yes, a large {target} is present, not a small one."),
         "negative answer says yes"),
        ("negative", _set(answer="Three {target} regions are visible, none of them tiny."),
         "negative answer states a count [3]"),
        ("position", _set(options=["upper left", "center", "lower left", "upper right"]),
         "options on a position row"),
        ("position", _set(width=9999, height=1), "width x height is 9999 x 1; the image is"),
        ("position", _set(patient_id=None), "no patient_id"),
        ("position", _set(slice_axis="axial", slice_index=3, spacing_mm=[1.0, 1.0, 1.0]),
         "['slice_axis', 'slice_index', 'spacing_mm'] on a row of a 2D source"),
        ("position", _set(case_id=""), "no case_id"),
    ],
)  # fmt: skip
def test_row_columns_that_state_what_the_image_does_not_are_named(
    folder: Path, question_type: str, edit: Callable[[dict], None], named: str
) -> None:
    shard, row_id = _edit_rows(folder, question_type, edit)
    result = validate(folder)
    assert any(v.startswith(f"{shard} row {row_id}") and named in v for v in result.violations), (
        result.violations
    )


def test_a_volume_slices_row_without_its_slice_is_named(tmp_path: Path) -> None:
    pytest.importorskip("SimpleITK")
    import phantoms

    from pipeline.sources.spec import load_spec

    image, labels = phantoms.phantom_arrays()
    phantoms.write_case(tmp_path, image, labels)
    spec = tmp_path / "mr.yaml"
    spec.write_text(
        "name: mr\nmodality: mri\nimages: images/*.nii.gz\nmasks: labels/{name}\n"
        "labels: {1: lesion}\n"
    )
    out = tmp_path / "out"
    build(BuildConfig((SourceRequest(load_spec(spec), tmp_path),), out, progress=False))
    assert validate(out).ok
    shard, row_id = _edit_rows(out, "position", _set(slice_index=None))
    named = f"{shard} row {row_id}: a volume slice's row without all of"
    assert any(v.startswith(named) for v in validate(out).violations)
