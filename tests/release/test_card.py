"""The data card: Hub-valid front matter, per-source sections, configs that load offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.build.run import BuildConfig, BuildSummary, SourceRequest, build
from pipeline.demo import write_busi, write_kvasir
from pipeline.release.card import size_category
from pipeline.sources import REGISTRY


@pytest.fixture(scope="module")
def built_with_summary(tmp_path_factory) -> tuple[Path, BuildSummary]:
    root = tmp_path_factory.mktemp("card-data")
    write_kvasir(root, 6, size=(96, 80))
    write_busi(root, 6, size=(96, 80))
    out = root / "out"
    sources = (
        SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),
        SourceRequest(REGISTRY["busi"], root / "Dataset_BUSI_with_GT"),
    )
    return out, build(BuildConfig(sources, out, progress=False, batch_size=4))


@pytest.fixture(scope="module")
def built(built_with_summary: tuple[Path, BuildSummary]) -> Path:
    return built_with_summary[0]


def test_front_matter_loads_as_a_hub_dataset_card(built: Path) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    card = huggingface_hub.DatasetCard((built / "README.md").read_text())
    data = card.data.to_dict()
    assert data["license"] == "other"
    assert {"image-segmentation", "visual-question-answering"} <= set(data["task_categories"])
    assert data["size_categories"] == ["n<1K"]
    names = [c["config_name"] for c in data["configs"]]
    assert names == ["default", "endoscopy", "ultrasound"]
    on_disk = {f"data/{p.name}" for p in (built / "data").iterdir()}
    listed = {p for c in data["configs"][:1] for f in c["data_files"] for p in f["path"]}
    assert listed == on_disk


def test_card_names_every_source_with_licence_and_citation(built: Path) -> None:
    text = (built / "README.md").read_text()
    for name in ("kvasir_seg", "busi"):
        source = REGISTRY[name]
        assert f"### {name}" in text
        assert source.citation in text and source.license in text
    assert "2505.11872" in text  # PRS-Med
    assert "{{" not in text and "{%" not in text


def test_each_modality_config_loads_offline(built: Path) -> None:
    datasets = pytest.importorskip("datasets")
    everything = datasets.load_dataset(str(built))
    endoscopy = datasets.load_dataset(str(built), "endoscopy")
    ultrasound = datasets.load_dataset(str(built), "ultrasound")
    for split in everything:
        parts = 0
        for modality, loaded in (("endoscopy", endoscopy), ("ultrasound", ultrasound)):
            if split in loaded:
                assert set(loaded[split]["modality"]) == {modality}
                parts += len(loaded[split])
        assert parts == len(everything[split])


@pytest.mark.parametrize(
    ("rows", "category"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (116_000, "100K<n<1M")]
)
def test_size_categories(rows: int, category: str) -> None:
    assert size_category(rows) == category


def test_plots_exist_and_open(built: Path) -> None:
    from PIL import Image

    text = (built / "README.md").read_text()
    for name in ("zones", "question_types", "sizes", "gallery"):
        path = built / "plots" / f"{name}.png"
        assert f"(plots/{name}.png)" in text
        with Image.open(path) as image:
            image.verify()


def test_streamed_stats_match_the_rows(built: Path) -> None:
    import pyarrow.parquet as pq

    from pipeline.release.stats import collect_stats

    stats = collect_stats(built)
    columns = ["modality", "question_type", "zone"]
    shards = sorted((built / "data").glob("*.parquet"))
    rows = [r for s in shards for r in pq.read_table(s, columns=columns).to_pylist()]
    assert stats.rows == len(rows)
    assert sum(stats.zones.values()) == sum(1 for r in rows if r["zone"])
    assert stats.size_histogram.sum() == sum(1 for r in rows if r["question_type"] == "size")


def test_the_stats_counted_at_render_are_those_of_the_folder(
    built_with_summary: tuple[Path, BuildSummary],
) -> None:
    from pipeline.release.stats import collect_stats

    built, summary = built_with_summary
    counted, streamed = summary.stats, collect_stats(built)
    assert counted.rows == streamed.rows > 0
    assert counted.by_modality_split_type == streamed.by_modality_split_type
    assert counted.zones == streamed.zones
    assert counted.patient_sides == streamed.patient_sides
    assert counted.size_histogram.tolist() == streamed.size_histogram.tolist()
    assert len(counted.modalities) == 2 and sum(counted.size_histogram) > 0
