"""The data card's figures (matplotlib, PNG): zones, question types, sizes, a gallery.

Every figure but the gallery comes from Stats (the rows' counts); the gallery decodes only
the few rows it shows.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from PIL import Image  # noqa: E402

from ..geometry.facts import ZONES  # noqa: E402
from ..io.images import as_rgb  # noqa: E402
from .stats import SIZE_BINS, Stats  # noqa: E402

THUMBNAIL = 256  # gallery pixels per side, at most
GALLERY_COLUMNS = ("image", "mask", "question", "answer", "modality", "question_type")


def _save(figure, path: Path) -> None:
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def zone_heatmaps(stats: Stats, path: Path) -> None:
    """Rows per 3x3 zone, one panel per modality."""
    modalities = stats.modalities or ["none"]
    figure, axes = plt.subplots(1, len(modalities), figsize=(3.2 * len(modalities), 3.2))
    for axis, modality in zip(np.atleast_1d(axes), modalities, strict=True):
        grid = np.array([stats.zones[(modality, zone)] for zone in ZONES]).reshape(3, 3)
        axis.imshow(grid, cmap="viridis")
        for (row, col), value in np.ndenumerate(grid):
            axis.text(col, row, str(value), ha="center", va="center", color="white")
        axis.set_title(modality)
        axis.set_xticks(range(3), ["left", "center", "right"])
        axis.set_yticks(range(3), ["upper", "middle", "lower"])
    figure.suptitle("Rows per zone (image frame)")
    _save(figure, path)


def question_types(stats: Stats, path: Path) -> None:
    counts = stats.question_types
    kinds = sorted(counts)
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.barh(kinds, [counts[k] for k in kinds])
    axis.set_xlabel("rows")
    axis.set_title("Question types")
    _save(figure, path)


def size_histogram(stats: Stats, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.stairs(stats.size_histogram, SIZE_BINS, fill=True)
    axis.set_xscale("symlog", linthresh=1e-4)
    # Plain tick labels: the default 10^k labels go through mathtext, whose parser costs
    # more than the rest of the card's figures together.
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_xlabel("area fraction of the target (log scale)")
    axis.set_ylabel("targets")
    axis.set_title("Object sizes")
    _save(figure, path)


def gallery(shards: list[Path], path: Path, count: int = 6) -> None:
    """The first row of the first shards given: the image with its mask in red, the QA.

    Only shards of redistributable sources are given, so the card never shows pixels of a
    source whose licence forbids it; with none, the figure says so.
    """
    rows = []
    pool = pa.default_memory_pool()
    for shard in shards:
        # One row: only its values are built (a dictionary read would copy every image of
        # the row group); the file is mapped, not read into Arrow's memory.
        parquet = pq.ParquetFile(shard, memory_map=True)
        batch = next(parquet.iter_batches(batch_size=1, columns=list(GALLERY_COLUMNS)))
        rows.append(batch.to_pylist()[0])
        del batch, parquet
        pool.release_unused()  # else Arrow's allocator keeps what each read freed
        if len(rows) == count:
            break
    figure, axes = plt.subplots(1, max(len(rows), 1), figsize=(3.5 * max(len(rows), 1), 4.8))
    if not rows:
        np.atleast_1d(axes)[0].text(0.5, 0.5, "no source of this build may be shown",
                                    ha="center", va="center")  # fmt: skip
        np.atleast_1d(axes)[0].axis("off")
    for axis, row in zip(np.atleast_1d(axes), rows, strict=False):
        image = as_rgb(Image.open(io.BytesIO(row["image"]["bytes"])))
        image.thumbnail((THUMBNAIL, THUMBNAIL))  # small figures need small pixels
        mask_image = Image.open(io.BytesIO(row["mask"]["bytes"]))
        mask = np.asarray(mask_image.resize(image.size, Image.Resampling.NEAREST)) > 127
        pixels = np.asarray(image).copy()
        pixels[mask] = (0.5 * pixels[mask] + [127, 0, 0]).astype(np.uint8)
        axis.imshow(pixels)
        axis.axis("off")
        text = (
            f"[{row['modality']}, {row['question_type']}]\nQ: {row['question']}\nA: {row['answer']}"
        )
        # A caption, not an axes title: placing titles measures every axis's ticks, about
        # half of this figure's time.
        caption = "\n".join(textwrap.wrap(text, 40, replace_whitespace=False))
        axis.text(0.5, 1.02, caption, fontsize=7, ha="center", va="bottom",
                  transform=axis.transAxes)  # fmt: skip
    _save(figure, path)


def write_count_plots(stats: Stats, out: Path) -> dict[str, Path]:
    """The figures of the rows' counts (all but the gallery) into out/; returns them by name.

    Pyplot keeps its figures in one registry: one thread at a time may draw."""
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "zones": out / "zones.png",
        "question_types": out / "question_types.png",
        "sizes": out / "sizes.png",
    }
    zone_heatmaps(stats, figures["zones"])
    question_types(stats, figures["question_types"])
    size_histogram(stats, figures["sizes"])
    return figures


def write_gallery(shown: list[Path], out: Path) -> Path:
    """The gallery of rows from the `shown` shards into out/; returns its path."""
    path = out / "gallery.png"
    gallery(shown, path)
    return path


def write_plots(stats: Stats, out: Path, shown: list[Path]) -> dict[str, Path]:
    """Every figure into out/ (the gallery from the `shown` shards); returns them by name."""
    figures = write_count_plots(stats, out)
    figures["gallery"] = write_gallery(shown, out)
    return figures
