"""A small real build (phantoms of four sources in their native layouts, a CT volume among
them), loaded as `datasets` loads it: the rows the scoring tests read."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build.run import BuildConfig, build, parse_source_arg
from pipeline.demo import write_busi, write_kvasir, write_montgomery


@pytest.fixture(scope="session")
def scoring_build(tmp_path_factory) -> Path:
    pytest.importorskip("SimpleITK")
    from pipeline.demo import write_msd_ct

    root = tmp_path_factory.mktemp("scoring-data")
    write_kvasir(root, 8, size=(96, 80))
    write_busi(root, 9, size=(96, 80))
    write_montgomery(root, 3)
    task = write_msd_ct(root, 3, size=64)
    sources = (
        f"kvasir_seg={root / 'Kvasir-SEG'}",
        f"busi={root / 'Dataset_BUSI_with_GT'}",
        f"montgomery={root / 'MontgomerySet'}",
        f"msd={task}",
    )
    out = root / "out"
    build(BuildConfig(tuple(map(parse_source_arg, sources)), out, progress=False, batch_size=8))
    return out


@pytest.fixture(scope="session")
def scoring_rows(scoring_build: Path) -> dict[str, list[dict]]:
    """The build's rows per split, as `datasets` decodes them (image and mask as PIL)."""
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(scoring_build))
    return {split: list(loaded[split]) for split in loaded}
