"""The output folder's README.md: a Hugging Face data card from Jinja2 templates.

`data_cards/card.md.j2` is the whole card; `data_cards/source.md.j2` one fragment per
source. The YAML front matter (licence, task categories, language, size category, and
`configs:` with the splits, plus one config per modality) is built here as data and dumped
with PyYAML, so it is always valid YAML.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import yaml

from ..geometry.facts import MIN_COMPONENT_FRACTION
from ..splits import SPLITS
from .stats import Stats

if TYPE_CHECKING:
    from ..sources.base import SourceInfo
    from ..splits import SplitRatios

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))  # fmt: skip


def data_cards_dir() -> Path:
    """The project's data_cards/: beside the package in a checkout, inside it when installed."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "data_cards"
    return checkout if checkout.is_dir() else package / "data_cards"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_cards_dir()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def with_withheld(card: str, sources: list[dict[str, Any]], command: str) -> str:
    """The card with a section (`withheld.md.j2`) before its sources saying whose pixels
    are withheld and how to restore them; `sources`: name, license, homepage, shards, rows
    of each; `command`: the rebuild."""
    section = _environment().get_template("withheld.md.j2").render(sources=sources, command=command)
    head, sep, rest = card.partition("\n## Sources\n")
    return f"{head}\n{section}{sep}{rest}" if sep else f"{card.rstrip()}\n\n{section}"


def size_category(rows: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "n>10M"


def _configs(shards: list[dict[str, str]]) -> list[dict[str, Any]]:
    """`default` over every shard, then one config per modality over its shards."""

    def files(selected: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [
            {"split": split, "path": [s["path"] for s in selected if s["split"] == split]}
            for split in SPLITS
            if any(s["split"] == split for s in selected)
        ]

    configs = [{"config_name": "default", "data_files": files(shards), "default": True}]
    for modality in sorted({s["modality"] for s in shards}):
        mine = [s for s in shards if s["modality"] == modality]
        configs.append({"config_name": modality, "data_files": files(mine)})
    return configs


def render_card(
    summary: dict[str, Any],
    sources: Sequence[SourceInfo],
    seed: int,
    ratios: SplitRatios,
    shards: list[dict[str, str]],
    templates: int,
    code_version: str,
    stats: Stats,
    figures: dict[str, str],
) -> str:
    """The data card of a build of `sources` (see the module docstring)."""
    env = _environment()
    described = [
        {
            "name": source.name,
            "modality": source.modality,
            "target": source.target,
            "license": source.license,
            "citation": source.citation,
            "homepage": source.homepage,
            "layout": source.layout,
            "display": source.display.describe(),
            "volume": source.volume.describe() if source.volume else None,
            "redistributable": {True: "yes", False: "no", None: "unknown"}[source.redistributable],
            "counts": summary["sources"][source.name],
        }
        for source in sources
    ]
    front = {
        "license": "other",
        "license_name": "per-source",
        "license_details": "; ".join(f"{s['name']}: {s['license']}" for s in described),
        "pretty_name": "MMRS",
        "task_categories": ["image-segmentation", "visual-question-answering"],
        "language": ["en"],
        "size_categories": [size_category(summary["rows"])],
        "tags": ["medical", "position-reasoning", *sorted({s["modality"] for s in described})],
        "configs": _configs(shards),
    }
    fragment = env.get_template("source.md.j2")
    return env.get_template("card.md.j2").render(
        front_matter=yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        pretty_name="MMRS",
        summary=summary,
        sources=described,
        fragments=[
            fragment.render(source=source, min_component_fraction=MIN_COMPONENT_FRACTION)
            for source in described
        ],
        seed=seed,
        ratios=ratios,
        templates=templates,
        code_version=code_version,
        modality_configs=[c["config_name"] for c in _configs(shards)[1:]],
        min_component_fraction=MIN_COMPONENT_FRACTION,
        figures=figures,
        by_modality_split_type=sorted(stats.by_modality_split_type.items()),
        patient_sides=sorted(stats.patient_sides.items()),
    )
