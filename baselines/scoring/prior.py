"""The `prior` reference system: what the training split says without looking at the image.

Per (source, target), from the TRAIN rows only:
- the mask: the mean of the distinct training masks of that target (one per image, the
  whole target: referring rows' instance masks excluded, empty masks of negative rows
  included), each resized bilinearly to a GRID x GRID map of the image, thresholded at 0.5;
- the facts: whether the target is present in most training images, and over the images
  that show it the most frequent zone, quadrant, size, count, PRS-Med word and known
  patient side (the zones of several instances: the most frequent set among images with
  that count), and the most frequent letter of the correct option;
- per (source, target, other structure): the most frequent relation kind.
Ties go to the smallest value (sorted order), so a fit is deterministic. A (source,
target) the training rows never show gets the same statistics pooled over every training
row.

The answer is the row's own template rendered with these facts (answers.render_answer).
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.qa.templates import LETTERS, TemplateSet, load_templates

from .answers import AnswerFacts, Row, render_answer, row_mask
from .metrics import THRESHOLD

GRID = 128  # the prior mask's side, in cells over the image's width and height
FORMAT = 1  # of the JSON a Prior is saved as


@functools.cache
def _project_templates() -> TemplateSet:
    return load_templates()


def _mode(counts: Counter) -> Any:
    """The most frequent value; ties to the smallest (None counts are never given)."""
    if not counts:
        return None
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


def _on_grid(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the fraction of each GRID x GRID cell it covers (bilinear)."""
    image = Image.fromarray(mask.astype(np.float32), mode="F")
    return np.asarray(image.resize((GRID, GRID), Image.Resampling.BILINEAR), dtype=np.float64)


@dataclass(frozen=True)
class PriorEntry:
    """The prior of one (source, target): its mask on the grid and its most frequent facts."""

    images: int  # distinct training masks averaged
    mask: np.ndarray = field(compare=False, repr=False)  # GRID x GRID booleans
    present: bool
    zone: str | None
    quadrant: str | None
    size: str | None
    n_components: int
    zones: tuple[str, ...]
    prsmed_position: str | None
    patient_side: str | None
    letter: str | None  # most frequent letter of the correct option

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mask"] = np.packbits(self.mask.ravel()).tobytes().hex()
        data["zones"] = list(self.zones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriorEntry:
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(data["mask"]), dtype=np.uint8))
        return cls(
            **{
                **data,
                "mask": bits[: GRID * GRID].reshape(GRID, GRID).astype(bool),
                "zones": tuple(data["zones"]),
            }
        )


class _Tally:
    """Counts of one (source, target)'s training images (or of all of them, pooled)."""

    def __init__(self) -> None:
        self.mask_sum = np.zeros((GRID, GRID))
        self.images = 0
        self.present = Counter()
        self.facts: dict[str, Counter] = defaultdict(Counter)
        self.zone_sets: dict[int, Counter] = defaultdict(Counter)
        self.letters = Counter()

    def add_image(self, row: Row, mask: np.ndarray) -> None:
        self.mask_sum += _on_grid(mask)
        self.images += 1
        facts = AnswerFacts.from_row(row)
        self.present[facts.present] += 1
        if not facts.present:
            return
        for name in ("zone", "quadrant", "size", "n_components", "prsmed_position"):
            self.facts[name][getattr(facts, name)] += 1
        if facts.patient_side is not None:
            self.facts["patient_side"][facts.patient_side] += 1
        self.zone_sets[facts.n_components][facts.zones] += 1

    def entry(self) -> PriorEntry:
        n = _mode(self.facts["n_components"]) or 0
        zone = _mode(self.facts["zone"])
        present = self.present[True] >= self.present[False]  # a tie: present
        return PriorEntry(
            images=self.images,
            mask=self.mask_sum / max(self.images, 1) >= THRESHOLD,
            present=present and n > 0,
            zone=zone,
            quadrant=_mode(self.facts["quadrant"]),
            size=_mode(self.facts["size"]),
            n_components=n,
            zones=(zone,) if n == 1 else _mode(self.zone_sets[n]) or (),
            prsmed_position=_mode(self.facts["prsmed_position"]),
            patient_side=_mode(self.facts["patient_side"]),
            letter=_mode(self.letters),
        )


@dataclass(frozen=True)
class Prior:
    """A fitted prior (see the module docstring); `fit_prior` makes one."""

    entries: dict[tuple[str, str], PriorEntry]
    relations: dict[tuple[str, str, str], str]  # (source, target, other) -> kind
    pooled: PriorEntry
    pooled_relation: str | None
    grid: int = GRID

    def facts(self, row: Row) -> AnswerFacts:
        """The facts the prior states for a row (absent where most training images lack
        the target; for multiple choice, the option of its zone, else of its letter)."""
        entry = self.entries.get((row["source"], row["target"]), self.pooled)
        if not entry.present:
            return AnswerFacts()
        zone = entry.zone
        options = row.get("options")
        if row["question_type"] == "multiple_choice" and options and zone not in options:
            letter = entry.letter or self.pooled.letter
            if letter is not None and LETTERS.index(letter) < len(options):
                zone = options[LETTERS.index(letter)]
        relation = None
        if row.get("relation"):
            key = (row["source"], row["target"], row["relation"]["target"])
            relation = self.relations.get(key, self.pooled_relation)
        return AnswerFacts(
            zone=zone,
            quadrant=entry.quadrant,
            size=entry.size,
            n_components=entry.n_components,
            zones=(zone,) if entry.n_components == 1 else entry.zones,
            prsmed_position=entry.prsmed_position,
            patient_side=entry.patient_side,
            present=True,
            relation=relation,
        )

    def predict(self, row: Row, templates: TemplateSet | None = None) -> tuple[np.ndarray, str]:
        """(mask, answer) for a row: the GRID x GRID mask as float32 0/1 (resize it to the
        image, as report.score_row does) and the answer its template gives with the
        prior's facts (the project's templates unless `templates` is given)."""
        entry = self.entries.get((row["source"], row["target"]), self.pooled)
        answer = render_answer(row, self.facts(row), templates or _project_templates())
        return entry.mask.astype(np.float32), answer

    def to_json(self) -> str:
        """The prior as JSON text, byte-identical for equal priors."""
        data = {
            "format": FORMAT,
            "grid": self.grid,
            "entries": [
                {"source": s, "target": t, **self.entries[s, t].as_dict()}
                for s, t in sorted(self.entries)
            ],
            "relations": [
                {"source": s, "target": t, "other": o, "kind": self.relations[s, t, o]}
                for s, t, o in sorted(self.relations)
            ],
            "pooled": self.pooled.as_dict(),
            "pooled_relation": self.pooled_relation,
        }
        return json.dumps(data, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Prior:
        """A prior saved by `to_json`."""
        data = json.loads(text)
        if data.get("format") != FORMAT or data.get("grid") != GRID:
            raise ValueError(
                f"a prior of format {data.get('format')!r} on grid {data.get('grid')!r}; "
                f"this code reads format {FORMAT} on grid {GRID}: fit it again"
            )
        entries = {}
        for item in data["entries"]:
            key = (item.pop("source"), item.pop("target"))
            entries[key] = PriorEntry.from_dict(item)
        relations = {(r["source"], r["target"], r["other"]): r["kind"] for r in data["relations"]}
        return cls(
            entries=entries,
            relations=relations,
            pooled=PriorEntry.from_dict(data["pooled"]),
            pooled_relation=data["pooled_relation"],
        )


def fit_prior(train_rows: Iterable[Row]) -> Prior:
    """Fit the prior on training rows; a row of any other split is a ValueError naming it.

    Rows are read once, as they come (a `datasets` split streams: pass it without its
    `image` column, which the prior never reads, to spare decoding the images).
    """
    tallies: dict[tuple[str, str], _Tally] = defaultdict(_Tally)
    pooled = _Tally()
    seen: set[Hashable] = set()
    kinds: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    kinds_seen: set[Hashable] = set()
    for row in train_rows:
        if row.get("split") != "train":
            raise ValueError(
                f"row {row.get('row_id')!r} is in split {row.get('split')!r}: "
                "the prior is fitted on the train split only"
            )
        key = (row["source"], row["target"])
        kind = row["question_type"]
        if kind == "multiple_choice" and row["options"] and row["zone"] in row["options"]:
            letter = LETTERS[list(row["options"]).index(row["zone"])]
            tallies[key].letters[letter] += 1
            pooled.letters[letter] += 1
        relation = row.get("relation")
        if relation and (row["image_id"], row["target"], relation["target"]) not in kinds_seen:
            kinds_seen.add((row["image_id"], row["target"], relation["target"]))
            kinds[(*key, relation["target"])][relation["kind"]] += 1
        if kind == "referring" or (row["image_id"], row["target"]) in seen:
            continue  # one whole-target mask per image and target
        seen.add((row["image_id"], row["target"]))
        mask = row_mask(row)
        tallies[key].add_image(row, mask)
        pooled.add_image(row, mask)
    pooled_kinds = Counter()
    for counts in kinds.values():
        pooled_kinds.update(counts)
    return Prior(
        entries={key: tally.entry() for key, tally in sorted(tallies.items())},
        relations={key: _mode(counts) for key, counts in sorted(kinds.items())},
        pooled=pooled.entry(),
        pooled_relation=_mode(pooled_kinds),
    )
