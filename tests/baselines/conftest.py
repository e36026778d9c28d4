"""A small real build (demo Kvasir-SEG and BUSI phantoms) shared by the baseline's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build.run import BuildConfig, parse_source_arg, run_build
from pipeline.demo import write_busi, write_kvasir


@pytest.fixture(scope="session")
def small_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build of 40 endoscopy and 30 ultrasound images (every split has rows)."""
    root = tmp_path_factory.mktemp("baseline-data")
    kvasir = write_kvasir(root, 40, size=(160, 128))
    busi = write_busi(root, 30, size=(150, 120))
    out = root / "build"
    sources = (parse_source_arg(f"kvasir_seg={kvasir}"), parse_source_arg(f"busi={busi}"))
    run_build(BuildConfig(sources=sources, out=out, progress=False))
    return out


def subset_build(folder: Path, out: Path, rows: int) -> Path:
    """A build folder of `rows` training rows of distinct images (the first row of each),
    which serve as its validation split too (for overfitting tests)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted((folder / "data").glob("train-*.parquet"))
    table = pa.concat_tables(pq.read_table(shard) for shard in shards)
    firsts: dict[str, int] = {}
    for index, image_id in enumerate(table.column("image_id").to_pylist()):
        firsts.setdefault(image_id, index)
    table = table.take(sorted(firsts.values())[:rows])
    (out / "data").mkdir(parents=True)
    for split in ("train", "validation"):
        pq.write_table(table, out / "data" / f"{split}-00000-of-00001.parquet")
    manifest = {"format": "subset", "rows_per_split": {"train": rows, "validation": rows}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def eight_rows(small_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return subset_build(small_build, tmp_path_factory.mktemp("eight") / "build", 8)
