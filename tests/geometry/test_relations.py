"""Relations between structures: inside (holes filled), outside, and nothing in between."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from scipy import ndimage

from pipeline.geometry.facts import analyse
from pipeline.geometry.patient import fill_holes
from pipeline.geometry.relations import relation, relations_of
from pipeline.qa.factcheck import check_answer
from pipeline.qa.templates import QAPlanner, load_templates


def _box(top: int, left: int, size: int, shape=(60, 60)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_fill_holes_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        mask = ndimage.binary_opening(rng.random((30, 40)) < rng.uniform(0.3, 0.8))
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_lesion_labelled_apart_from_its_organ_is_inside_it() -> None:
    organ = _box(10, 10, 30)
    lesion = _box(20, 20, 5)
    organ &= ~lesion  # one value per voxel: the lesion is a hole in the organ's label
    assert relation(lesion, organ) == "inside"
    assert relation(organ, lesion) == "outside"  # the organ does not lie in the lesion
    assert relation(_box(45, 45, 5), organ) == "outside"
    assert relation(_box(8, 8, 6), organ) is None  # partly inside: not stated
    assert relation(lesion, np.zeros_like(organ)) is None


def test_each_target_gets_its_smallest_container_and_one_outside_structure() -> None:
    whole, core, other = _box(5, 5, 40), _box(15, 15, 15), _box(50, 50, 5)
    enhancing = _box(18, 18, 4)
    masks = {"whole": whole, "core": core, "enhancing": enhancing, "other": other}
    found = relations_of(masks, "img")
    assert found["enhancing"][0] == ("core", "inside")
    assert found["core"][0] == ("whole", "inside")
    assert found["enhancing"][1] == ("other", "outside")
    assert relations_of(masks, "img") == found  # stable


def test_relation_rows_answer_true_and_the_fact_check_catches_a_flip() -> None:
    planner = QAPlanner(load_templates(), 0)
    lesion = _box(20, 20, 5)
    facts, instances = analyse(lesion)
    for kind, word in (("inside", "yes"), ("outside", "no")):
        rows = planner.plan(facts, "lesion", "ct", "img", instances, relations=(("liver", kind),))
        (row,) = [r for r in rows if r.question_type == "relation"]
        assert row.relation == ("liver", kind)
        assert row.answer.lower().startswith(word) and "liver" in row.question
        args = (row.question_type, row.question, row.answer, None, facts, "lesion")
        assert check_answer(*args, relation=("liver", kind)) == []
        flipped = "outside" if kind == "inside" else "inside"
        assert check_answer(*args, relation=("liver", flipped))


def test_validate_rederives_relations_from_both_masks(tmp_path) -> None:
    from PIL import Image

    from pipeline.build.run import BuildConfig, build, parse_source_arg
    from pipeline.checks.folder import validate

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index in range(3):
        labels = np.zeros((60, 60), dtype=np.uint8)
        labels[_box(10, 10 + index, 30)] = 1
        labels[_box(20, 20 + index, 5)] = 2  # the lesion, labelled apart, inside the organ
        Image.fromarray(labels * 100).save(tmp_path / "images" / f"a{index}.png")
        Image.fromarray(labels).save(tmp_path / "masks" / f"a{index}.png")
    spec = tmp_path / "organs.yaml"
    spec.write_text(
        "name: organs\nmodality: ct\nimages: images/*.png\nmasks: masks/{name}\n"
        "labels: {1: organ, 2: lesion}\n"
    )
    out = tmp_path / "out"
    build(BuildConfig((parse_source_arg(f"{spec}={tmp_path}"),), out, progress=False))
    assert validate(out).ok
    shard = sorted((out / "data").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    rows = table.to_pylist()
    related = [r for r in rows if r["question_type"] == "relation"]
    assert {(r["target"], r["relation"]["target"], r["relation"]["kind"]) for r in related} == {
        ("lesion", "organ", "inside"),
        ("organ", "lesion", "outside"),
    }
    row = next(r for r in related if r["relation"]["kind"] == "inside")
    row["relation"]["kind"] = "outside"  # a false fact, with the answer left as it was
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), shard)
    result = validate(out)
    assert any("the masks give 'inside'" in v for v in result.violations)
    assert any("answered 'yes'" in v for v in result.violations)


def test_which_structure_answers_name_the_container() -> None:
    facts, _ = analyse(_box(20, 20, 5))
    args = ("relation", "Within which structure does the lesion lie?")
    good = "The lesion lies within the left lung."
    assert check_answer(*args, good, None, facts, "lesion", relation=("left lung", "inside")) == []
    assert check_answer(*args, good, None, facts, "lesion", relation=("right lung", "inside"))
    assert check_answer(*args, good, None, facts, "lesion", relation=("left lung", "outside"))
