"""The output folder's README.md: a Hugging Face data card with the splits as `configs:`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from .splits import SPLITS

if TYPE_CHECKING:
    from .build import BuildConfig


def render_card(summary: dict[str, Any], config: BuildConfig) -> str:
    """A data card whose front matter maps each split to its shards."""
    splits = [s for s in SPLITS if summary["rows_per_split"].get(s)]
    front = {
        "license": "other",
        "task_categories": ["image-segmentation", "visual-question-answering"],
        "language": ["en"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits],
            }
        ],
    }
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        "# MMRS build",
        "",
        "Image + mask + spatial question/answer rows built with MMRS "
        f"(seed {config.seed}). Each source keeps its own licence:",
        "",
        "| source | modality | licence | images | rows |",
        "|---|---|---|---|---|",
    ]
    for request in config.sources:
        counts = summary["sources"][request.source.name]
        lines.append(
            f"| {request.source.name} | {request.source.modality} | {request.source.license} "
            f"| {counts['converted']} | {counts['rows']} |"
        )
    lines += [
        "",
        "Rows per split: " + ", ".join(f"{s} {summary['rows_per_split'][s]}" for s in splits),
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/folder")',
        "```",
        "",
    ]
    return "\n".join(lines)
