"""What MSD and nnU-Net `dataset.json` files say: modality, labels, windows, names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..geometry.slicing import Window
from .base import LayoutError

_MRI_WORDS = ("mr", "mri", "t1", "t2", "flair", "adc", "dwi", "pd", "bold", "cine", "dce")
# CT windows by words in a task's name; other CT tasks are windowed by percentile.
_CT_WINDOWS = (
    (("lung", "nodule", "covid", "thorax", "chest"), "lung"),
    (("liver", "hepatic", "pancreas", "spleen", "colon", "kidney", "abdomen", "organ"),
     "abdomen"),
    (("brain", "head", "hemorrhage"), "brain"),
    (("bone", "vertebra", "spine", "rib"), "bone"),
)  # fmt: skip


def read_dataset_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise LayoutError(f"{path}: expected a JSON object")
    return data


def modality_of(channel_names: list[str], path: Path) -> str:
    """ct or mri from a dataset's channel names (the first channel is the one converted)."""
    name = channel_names[0].strip().lower() if channel_names else ""
    if name in ("ct", "computed tomography") or name.startswith("ct"):
        return "ct"
    if any(re.fullmatch(rf"{word}\w*", name) for word in _MRI_WORDS) or "mri" in name:
        return "mri"
    raise LayoutError(
        f"{path}: cannot tell CT from MRI by the channel name {channel_names[:1]!r}; "
        f"describe the dataset with a YAML spec instead"
    )


def ct_window(task: str) -> Window:
    words = task.lower()
    for keys, window in _CT_WINDOWS:
        if any(key in words for key in keys):
            return window
    return "percentile"


def source_name(prefix: str, folder: str) -> str:
    """A registry-style name for a dataset folder ("Task04_Hippocampus" -> msd_task04_...)."""
    return f"{prefix}_" + re.sub(r"[^a-z0-9]+", "_", folder.lower()).strip("_")


def structure_name(name: str) -> str:
    return name.replace("_", " ").strip().lower()
