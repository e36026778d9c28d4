"""Readable structure names for questions and answers, and the side a name carries.

Label names arrive as a dataset spells them (`kidney_left`, `vertebrae_L2`, `rib_left_3`).
The `target` column keeps that name; the text uses a readable one, by these rules:
- underscores become spaces;
- a trailing vertebral level (C1-C7, T1-T12, L1-L5, S1...) or number of a vertebra or rib
  moves in front of it, letters kept as capitals, numbers as ordinals, the bone word
  singular: "vertebrae_L2" -> "L2 vertebra", "rib_left_3" -> "left 3rd rib";
- a trailing side word ("left", "right") moves to the front: "kidney_left" -> "left
  kidney", "lung_upper_lobe_right" -> "right lung upper lobe".
Anything else is kept as written. A source may name what these rules get wrong in a
`display_names` map ({source name: text name}), which wins over them.

The side a name carries ("left kidney" -> left) is never read as a stated side of the
patient (qa/factcheck.py reads sides only from patient-frame phrases); it must agree with
the side derived from the mask, so a derived side that contradicts it is not stated
(`side_for`). The heart's chambers carry the heart's own sides, not the patient's (the
right ventricle lies in front, partly left of the midline): a name with a chamber word
(atrium, atrial, auricle, ventricle; not the brain's lateral ventricles) carries no side.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SIDES = ("left", "right")
_BONES = {"vertebra": "vertebra", "vertebrae": "vertebra", "rib": "rib", "ribs": "rib"}
_LEVEL = re.compile(r"^(?:[ctls]\d{1,2}|\d{1,2})$", re.IGNORECASE)
_WORDS = re.compile(r"[a-z]+")
_CHAMBERS = {"atrium", "atria", "atrial", "auricle", "ventricle", "ventricles", "ventricular"}


def _ordinal(number: int) -> str:
    if number % 100 in (11, 12, 13):
        return f"{number}th"
    return f"{number}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(number % 10, 'th') }"


def readable_name(name: str) -> str:
    """The text name of a source's structure name (see the module docstring)."""
    words = name.replace("_", " ").split()
    level = None
    if len(words) >= 2 and _LEVEL.match(words[-1]) and any(w.lower() in _BONES for w in words):
        level = words.pop()
        level = _ordinal(int(level)) if level.isdigit() else level.upper()
    side = None
    if len(words) >= 2 and words[-1].lower() in SIDES:
        side = words.pop().lower()
    if level is not None:
        words = [level, *(_BONES.get(w.lower(), w) for w in words)]
    if side is not None:
        words = [side, *words]
    return " ".join(words) if words else name


def text_name(name: str, display_names: Mapping[str, str] | None = None) -> str:
    """The name a question or answer uses: the source's own map first, then the rules."""
    if display_names and name in display_names:
        return display_names[name]
    return readable_name(name)


def named_side(name: str) -> str | None:
    """The side of the patient a structure's name carries ("left kidney" -> "left"), None
    when it names no side or both."""
    words = set(_WORDS.findall(name.lower()))
    if words & _CHAMBERS and "lateral" not in words:
        return None
    found = words & set(SIDES)
    return found.pop() if len(found) == 1 else None


def side_for(name: str, side: str | None) -> str | None:
    """A derived side as stated for a structure of that name: None where it contradicts
    the side the name carries (a "left kidney" found in the midline is not stated)."""
    named = named_side(name)
    return side if named is None or side == named else None
