"""QA templates: every family, seeded determinism, and no answer that its facts contradict."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from pipeline.geometry.facts import ZONES, analyse
from pipeline.qa.factcheck import check_answer
from pipeline.qa.templates import FAMILIES, QAPlanner, load_templates


@pytest.fixture(scope="module")
def templates():
    return load_templates()


def _plan(mask: np.ndarray, templates, seed: int = 0, image_id: str = "img", target="polyp"):
    found, instances = analyse(mask)
    rows = QAPlanner(templates, seed).plan(found, target, "endoscopy", image_id, instances)
    return found, rows


def _blob(shape, top, left, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_at_least_55_templates_in_at_least_7_families(templates) -> None:
    assert templates.count() >= 55
    assert len([f for f in FAMILIES if templates.by_family[f]]) >= 7


def test_single_instance_gets_every_positive_family(templates) -> None:
    found, rows = _plan(_blob((60, 60), 5, 40, 10), templates)
    kinds = [r.question_type for r in rows]
    # No patient frame: no side is known, so no laterality question and no side in any row;
    # one structure alone has no relation to another.
    assert set(kinds) == set(FAMILIES) - {"negative", "laterality", "relation"}
    assert all(r.patient_side is None for r in rows)
    assert kinds.count("verification") == 2
    assert found.zone == "upper right"
    for row in rows:
        assert check_answer(row.question_type, row.question, row.answer, row.options, found) == []


def test_verification_is_balanced_per_target(templates) -> None:
    for seed in range(20):
        found, rows = _plan(_blob((90, 90), 40, 40, 10), templates, seed=seed)
        answers = [
            r.answer.split()[0].strip(".,").lower()
            for r in rows
            if r.question_type == "verification"
        ]
        assert sorted(answers) == ["no", "yes"]


def test_multiple_choice_has_four_distinct_options_and_the_right_letter(templates) -> None:
    found, rows = _plan(_blob((90, 90), 70, 5, 10), templates)
    (mc,) = [r for r in rows if r.question_type == "multiple_choice"]
    assert len(set(mc.options)) == 4 and found.zone in mc.options
    assert all(option in ZONES for option in mc.options)
    letter = "ABCD"[mc.options.index(found.zone)]
    assert f"{letter}" in mc.answer


def test_referring_row_of_a_multi_instance_target_masks_one_instance(templates) -> None:
    mask = _blob((90, 90), 5, 5, 10) | _blob((90, 90), 70, 70, 12)
    found, rows = _plan(mask, templates)
    assert found.n_components == 2
    (ref,) = [r for r in rows if r.question_type == "referring"]
    assert ref.mask is not None and ref.facts is not None
    assert int(ref.mask.sum()) in (100, 144)
    assert not (ref.mask & ~mask).any()
    assert ref.facts.zone in ref.question  # named by where it is
    assert check_answer("referring", ref.question, ref.answer, None, ref.facts) == []
    assert not [r for r in rows if r.question_type == "multiple_choice"]  # no single zone


def test_multi_instance_answers_name_every_instance_zone(templates) -> None:
    mask = _blob((90, 90), 5, 5, 10) | _blob((90, 90), 70, 70, 12)
    found, rows = _plan(mask, templates)
    (position,) = [r for r in rows if r.question_type == "position"]
    assert "upper left" in position.answer and "lower right" in position.answer
    assert "center" not in position.answer  # the union centroid is not a place of the target
    for row in rows:
        assert (
            check_answer(
                row.question_type, row.question, row.answer, row.options, row.facts or found
            )
            == []
        )


def test_absent_target_gives_negative_rows_only(templates) -> None:
    found, rows = _plan(np.zeros((40, 40), dtype=bool), templates)
    assert rows and {r.question_type for r in rows} == {"negative"}
    for row in rows:
        assert check_answer("negative", row.question, row.answer, None, found) == []


def test_same_seed_same_rows_and_seed_matters(templates) -> None:
    mask = _blob((80, 80), 30, 10, 15)
    assert _plan(mask, templates, seed=3)[1] == _plan(mask, templates, seed=3)[1]
    variants = {tuple(r.template_id for r in _plan(mask, templates, seed=s)[1]) for s in range(10)}
    assert len(variants) > 1


def test_random_masks_never_contradict_their_facts(templates) -> None:
    rng = random.Random(7)
    for trial in range(200):
        height, width = rng.randint(8, 60), rng.randint(8, 60)
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(rng.randint(1, 4)):
            top, left = rng.randrange(height), rng.randrange(width)
            mask[top : top + rng.randint(1, 9), left : left + rng.randint(1, 9)] = True
        found, rows = _plan(mask, templates, seed=trial, image_id=str(trial))
        assert rows
        for row in rows:
            facts = row.facts or found
            problems = check_answer(row.question_type, row.question, row.answer, row.options, facts)
            assert problems == [], (row, facts)


def test_a_template_using_a_null_fact_is_never_chosen(tmp_path: Path) -> None:
    for family in FAMILIES:
        (tmp_path / f"{family}.yaml").write_text(
            f"family: {family}\ntemplates:\n"
            f"  - id: {family}_side\n"
            f'    question: "Which side of the patient holds the {{{{ target }}}}?"\n'
            f'    answer: "The patient\'s {{{{ patient_side }}}} side."\n'
            f"  - id: {family}_plain\n"
            f'    question: "Q {{{{ target }}}}?"\n'
            f'    answer: "A {{{{ target }}}}."\n'
        )
    templates = load_templates(tmp_path)
    _, rows = _plan(_blob((30, 30), 2, 2, 5), templates)
    assert rows and all(not r.template_id.endswith("_side") for r in rows)


def test_template_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "position.yaml").write_text(
        'family: position\ntemplates:\n  - id: bad\n    question: "{{ target "\n    answer: "x"\n'
    )
    with pytest.raises(ValueError, match="position.yaml: template bad"):
        load_templates(tmp_path)


@pytest.mark.parametrize(
    ("left", "side"),
    [(40, "left"), (5, "right"), (25, "midline")],
)
def test_laterality_rows_state_the_side_the_frame_gives(templates, left, side) -> None:
    from pipeline.geometry.patient import PatientFrame, instances_side

    mask = _blob((60, 60), 20, left, 10)
    found, instances = analyse(mask)
    frame = PatientFrame(1.0, 0.0, -30.0, 2.0)  # midline at column 30, left on the right
    assert instances_side(instances, frame) == side
    rows = QAPlanner(templates, 0).plan(
        found, "nodule", "ct", "img", [], instances_side(instances, frame), frame
    )
    lateral = [r for r in rows if r.question_type == "laterality"]
    assert len(lateral) == 1 and all(r.patient_side == side for r in rows)
    for row in rows:
        assert (
            check_answer(
                row.question_type, row.question, row.answer, row.options, found, "nodule", side
            )
            == []
        )
    wrong = "right" if side != "right" else "left"
    assert check_answer("laterality", "", lateral[0].answer, None, found, "nodule", wrong)


def test_two_lungs_are_bilateral_and_each_referred_instance_has_its_own_side(templates) -> None:
    from pipeline.geometry.patient import PatientFrame, instances_side

    mask = _blob((60, 60), 20, 5, 12) | _blob((60, 60), 30, 44, 8)
    found, instances = analyse(mask)
    frame = PatientFrame(1.0, 0.0, -30.0, 2.0)
    assert instances_side(instances, frame) == "bilateral"
    rows = QAPlanner(templates, 0).plan(found, "lungs", "ct", "img", instances, "bilateral", frame)
    referring = [r for r in rows if r.mask is not None]
    assert referring
    for row in referring:
        expected = "left" if row.facts.centroid[0] > 0.5 else "right"
        assert row.patient_side == expected
    assert {r.patient_side for r in rows if r.mask is None} == {"bilateral"}


def test_a_templates_folder_may_leave_out_the_optional_families(tmp_path: Path) -> None:
    import shutil

    from pipeline.qa.templates import OPTIONAL, default_templates_dir

    for path in default_templates_dir().glob("*.yaml"):
        if path.stem not in OPTIONAL:
            shutil.copy(path, tmp_path / path.name)
    older = load_templates(tmp_path)
    assert not older.by_family["laterality"] and not older.by_family["relation"]
    from pipeline.geometry.patient import PatientFrame

    found, instances = analyse(_blob((60, 60), 20, 40, 10))
    frame = PatientFrame(1.0, 0.0, -30.0, 2.0)
    rows = QAPlanner(older, 0).plan(
        found, "nodule", "ct", "img", instances, "left", frame, (("lung", "inside"),)
    )
    assert rows and not {"laterality", "relation"} & {r.question_type for r in rows}
    (tmp_path / "count.yaml").unlink()
    with pytest.raises(ValueError, match="no templates for famil"):
        load_templates(tmp_path)
