"""Whole builds on phantom data in native layouts: contract, determinism, size, loading."""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import weakref
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.build.run import BATCH_SHARE, BuildConfig, SourceRequest, build, run_build
from pipeline.checks.folder import SHARD_NAME, validate
from pipeline.demo import write_busi, write_kvasir, write_montgomery
from pipeline.sources import REGISTRY


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_kvasir(root, 12)
    write_busi(root, 9)
    write_montgomery(root, 4)
    return root


def _config(root: Path, out: Path, **kwargs) -> BuildConfig:
    sources = (
        SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),
        SourceRequest(REGISTRY["busi"], root / "Dataset_BUSI_with_GT"),
        SourceRequest(REGISTRY["montgomery"], root / "MontgomerySet"),
    )
    return BuildConfig(sources=sources, out=out, progress=False, **kwargs)


@pytest.fixture(scope="module")
def built(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "mmrs"
    build(_config(demo_root, out))
    return out


def _rows(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted((folder / "data").glob("*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    return rows


def test_output_layout_and_validation(built: Path) -> None:
    names = sorted(p.name for p in (built / "data").iterdir())
    shards = [SHARD_NAME.fullmatch(n) for n in names]
    assert names and all(shards)
    for split in {m["split"] for m in shards}:
        mine = [m for m in shards if m["split"] == split]
        assert sorted(int(m["index"]) for m in mine) == list(range(len(mine)))
        assert {int(m["total"]) for m in mine} == {len(mine)}
    for name in ("README.md", "manifest.json", "errors.jsonl", "report.json"):
        assert (built / name).is_file()
    result = validate(built)
    assert result.ok, result.violations
    manifest = json.loads((built / "manifest.json").read_text())
    assert sum(manifest["rows_per_split"].values()) == result.rows
    for counts in manifest["counts"].values():
        assert counts["discovered"] == counts["converted"] + counts["skipped"] + counts["failed"]
    for relative, digest in manifest["files"].items():
        assert hashlib.sha256((built / relative).read_bytes()).hexdigest() == digest


def test_rows_follow_the_contract(built: Path, demo_root: Path) -> None:
    rows = _rows(built)
    kvasir = [r for r in rows if r["source"] == "kvasir_seg"]
    source_bytes = (demo_root / "Kvasir-SEG" / "images" / kvasir[0]["source_file"]).read_bytes()
    assert kvasir[0]["image"]["bytes"] == source_bytes  # a JPEG stays that JPEG
    lungs = {r["target"] for r in rows if r["source"] == "montgomery"}
    assert lungs == {"left lung", "right lung"}
    left = [r for r in rows if r["target"] == "left lung" and r["question_type"] != "referring"]
    assert all(r["centroid"][0] > 0.5 for r in left)  # radiological: patient's left on image right
    negatives = [r for r in rows if r["question_type"] == "negative"]
    assert negatives and all(r["case_id"].startswith("normal") for r in negatives)
    # Kvasir and BUSI declare no display; the phantom chest's bright "lungs" are no body
    # that holds both lungs, so no side is stated there either.
    assert all(r["patient_side"] is None and r["patient_frame"] is None for r in rows)
    assert {r["modality"] for r in rows} == {"endoscopy", "ultrasound", "xray"}


def test_folder_is_within_125_percent_of_unique_images_and_masks(built: Path) -> None:
    unique: dict[bytes, int] = {}
    for row in _rows(built):
        for column in ("image", "mask"):
            data = row[column]["bytes"]
            unique[hashlib.sha256(data).digest()] = len(data)
    on_disk = sum(p.stat().st_size for p in (built / "data").iterdir())
    assert on_disk <= 1.25 * sum(unique.values())


def test_load_dataset_offline_with_image_features(built: Path) -> None:
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(built))
    manifest = json.loads((built / "manifest.json").read_text())
    assert {s: len(loaded[s]) for s in loaded} == manifest["rows_per_split"]
    train = loaded["train"]
    assert isinstance(train.features["image"], datasets.Image)
    assert isinstance(train.features["mask"], datasets.Image)
    row = train[0]
    assert row["image"].size == (row["width"], row["height"]) == row["mask"].size
    assert row["mask"].mode == "L"


def test_same_inputs_same_bytes(demo_root: Path, built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build(_config(demo_root, again))
    first = json.loads((built / "manifest.json").read_text())["files"]
    second = json.loads((again / "manifest.json").read_text())["files"]
    assert first == second


def test_seed_changes_wording_not_facts(demo_root: Path, built: Path, tmp_path: Path) -> None:
    other = tmp_path / "seed1"
    build(_config(demo_root, other, seed=1))
    before, after = _rows(built), _rows(other)
    assert [r["template_id"] for r in before] != [r["template_id"] for r in after]
    assert {(r["case_id"], r["split"]) for r in before} == {
        (r["case_id"], r["split"]) for r in after
    }


def test_splits_are_hash_stable_when_cases_are_added(tmp_path: Path) -> None:
    def splits(count: int) -> dict[str, str]:
        root = tmp_path / f"data{count}"
        write_kvasir(root, count, size=(64, 48))
        out = tmp_path / f"out{count}"
        build(
            BuildConfig(
                (SourceRequest(REGISTRY["kvasir_seg"], root / "Kvasir-SEG"),), out, progress=False
            )
        )
        return {r["case_id"]: r["split"] for r in _rows(out)}

    small, large = splits(20), splits(60)
    assert small.items() <= large.items()
    assert set(large.values()) == {"train", "validation", "test"}


def test_existing_output_is_kept_unless_overwrite(demo_root: Path, built: Path) -> None:
    from pipeline.build.run import BuildError

    with pytest.raises(BuildError, match="--overwrite"):
        build(_config(demo_root, built))
    with pytest.raises(BuildError, match="not an MMRS build"):
        build(_config(demo_root, demo_root, overwrite=True))


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_cases_are_let_go_once_their_batch_is_recorded(
    demo_root: Path, tmp_path: Path, cached: bool
) -> None:
    """A build holds the cases of the batches not yet recorded only: memory stays flat as
    the number of cases grows (batches extracted, then rendered; or converted at once)."""
    cases: list[weakref.ref] = []
    alive: list[int] = []

    def extract(stage, jobs):
        for job in jobs:  # every earlier batch is recorded once the next one is asked for
            gc.collect()
            alive.append(sum(ref() is not None for ref in cases))
            batch = job.cases if cached else job.extract.cases
            cases.extend(weakref.ref(case) for case in batch)
            result = stage(job)
            del job, batch
            yield result

    config = replace(
        _config(demo_root, tmp_path / "out", batch_size=4),
        cache_dir=tmp_path / "cache" if cached else None,
    )
    summary = run_build(config, extract)
    assert len(alive) > 3 and len(cases) == sum(c.discovered for c in summary.sources.values())
    assert alive == [0] * len(alive)


def test_a_build_without_a_cache_stores_no_pixels_between_extract_and_render(
    demo_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Each batch is converted at once: no payload is written; a build with a cache writes
    one per batch (what a template change re-renders from)."""
    from pipeline.build import stages

    written: list[Path] = []
    enter = stages.PayloadWriter.__enter__

    def noted(writer):
        written.append(writer.path)
        return enter(writer)

    monkeypatch.setattr(stages.PayloadWriter, "__enter__", noted)
    config = _config(demo_root, tmp_path / "out", batch_size=4)
    summary = build(config)
    assert written == [] and summary.images > 4
    build(replace(config, out=tmp_path / "cached", cache_dir=tmp_path / "cache"))
    assert len(written) > 1
    assert {p.parent for p in written} == {tmp_path / "cache" / "extract"}


def _counted(source_name: str, found: list) -> object:
    """The registered source, noting in `found` each item it discovers."""
    source = REGISTRY[source_name]

    def discover(root: Path):
        for item in source.discover(root):
            found.append(item)
            yield item

    return replace(source, discover=discover)


def test_discovery_goes_only_as_far_as_the_batches_asked_for(
    demo_root: Path, tmp_path: Path
) -> None:
    """Cases are discovered as the extract stage asks for batches, not all before it: at
    most BATCH_SHARE batches of the largest size ahead (to see how close the end is)."""
    found: list = []
    source = _counted("kvasir_seg", found)
    config = BuildConfig(
        sources=(SourceRequest(source, demo_root / "Kvasir-SEG"),),
        out=tmp_path / "out",
        progress=False,
        batch_size=1,
    )
    discovered_at_extract: list[int] = []

    def extract(stage, jobs):
        for job in jobs:
            discovered_at_extract.append(len(found))
            yield stage(job)

    summary = run_build(config, extract)
    # 12 cases, batches of 1, each planned with the next BATCH_SHARE cases found
    assert BATCH_SHARE == 4
    assert discovered_at_extract == list(range(4, 13)) + [12] * 3
    assert summary.sources["kvasir_seg"].converted == 12


def test_a_later_source_of_the_wrong_layout_fails_before_any_extraction(
    demo_root: Path, tmp_path: Path
) -> None:
    from pipeline.build.run import BuildError

    wrong = tmp_path / "not_busi"
    (wrong / "some folder").mkdir(parents=True)
    config = BuildConfig(
        sources=(
            SourceRequest(REGISTRY["kvasir_seg"], demo_root / "Kvasir-SEG"),
            SourceRequest(REGISTRY["busi"], wrong),
        ),
        out=tmp_path / "out",
        progress=False,
        batch_size=4,  # the first source's batches are complete before the second starts
    )
    extracted: list = []

    def extract(stage, jobs):
        for job in jobs:
            extracted.append(job)
            yield stage(job)

    with pytest.raises(BuildError, match=f"busi: data root {wrong}"):
        run_build(config, extract)
    assert extracted == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_busi"]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_the_output_is_the_same_for_any_batch_size(
    demo_root: Path, built: Path, tmp_path: Path
) -> None:
    """Batches are units of work only: the files, manifest included, do not depend on them."""
    for size in (1, 5):
        out = tmp_path / f"batch{size}"
        build(_config(demo_root, out, batch_size=size))
        assert _manifest(out) == _manifest(built)
        assert (out / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()


def test_each_split_of_a_small_source_is_one_shard(built: Path) -> None:
    shards = _manifest(built)["shards"]
    kinds = [(s["source"], s["split"]) for s in shards]
    assert len(kinds) == len(set(kinds))  # one shard each
    rows = _rows(built)
    assert set(kinds) == {(r["source"], r["split"]) for r in rows}
    for shard in shards:  # each shard holds one source (one modality, one licence)
        table = pq.read_table(built / shard["path"], columns=["source", "modality", "split"])
        assert set(table.column("source").to_pylist()) == {shard["source"]}
        assert set(table.column("modality").to_pylist()) == {shard["modality"]}
        assert set(table.column("split").to_pylist()) == {shard["split"]}


def _image_bytes(path: Path) -> list[int]:
    """The distinct image and mask bytes of each image of a shard, in order."""
    table = pq.read_table(path, columns=["image_id", "image", "mask"]).to_pylist()
    images: dict[str, set[bytes]] = {}
    for row in table:
        images.setdefault(row["image_id"], set()).update(
            (row["image"]["bytes"], row["mask"]["bytes"])
        )
    return [sum(len(b) for b in values) for values in images.values()]


def test_shards_are_the_fewest_within_the_maximum(demo_root: Path, built: Path, tmp_path: Path):
    out = tmp_path / "small-shards"
    most = 150_000
    summary = build(_config(demo_root, out, max_shard_bytes=most, batch_size=3))
    assert validate(out, checked=summary.checks).ok
    shards = _manifest(out)["shards"]
    assert _rows(out) == _rows(built)  # the same rows in the same order, in more files
    groups: dict[tuple[str, str], list[list[int]]] = {}
    for shard in shards:
        sizes = _image_bytes(out / shard["path"])
        groups.setdefault((shard["source"], shard["split"]), []).append(sizes)
        assert sum(sizes) <= most or len(sizes) == 1
    assert any(len(files) > 1 for files in groups.values())
    for files in groups.values():
        total = sum(map(sum, files))
        assert len(files) == max(1, -(-total // most))  # the fewest that hold the split
    # A shard of whole groups of a part takes their checks; one cut inside a group is
    # checked by the validation (as above).
    assert {sha for sha, _ in summary.checks} <= {
        sha for name, sha in _manifest(out)["files"].items() if name.startswith("data/")
    }


def test_batches_shrink_near_the_builds_end(tmp_path: Path) -> None:
    """At most batch_size cases; near the build's end a share of what is left, so the last
    tasks are short whatever the sources' sizes; never two sources in one batch. (These
    cases have no files: each counts as the least work, so the share is of the cases.)"""
    from pipeline.build.run import MIN_BATCH, plan_extract
    from pipeline.sources.base import Case, Problem

    requests = [SourceRequest(REGISTRY[name], tmp_path) for name in ("kvasir_seg", "busi")]
    discovered = [
        (request, Case(request.source.name, f"c{i}", f"p{i}", tmp_path / f"{i}.png", ()))
        for request, count in zip(requests, (900, 150), strict=True)
        for i in range(count)
    ]
    discovered.insert(3, (requests[0], Problem("kvasir_seg", tmp_path / "x", "unreadable")))
    jobs = list(plan_extract(iter(discovered), 64, tmp_path))
    sizes = [(job.source.name, len(job.cases)) for job in jobs]
    assert [job.index for job in jobs] == list(range(len(jobs)))
    cases = [case for _, case in discovered if isinstance(case, Case)]
    assert [case for job in jobs for case in job.cases] == cases
    assert all(size <= 64 for _, size in sizes)
    assert sizes[:5] == [("kvasir_seg", 64)] * 5  # the end is further than 8 batches
    kvasir = [size for name, size in sizes if name == "kvasir_seg"]
    busi = [size for name, size in sizes if name == "busi"]
    assert sum(kvasir) == 900 and sum(busi) == 150
    assert all(a >= b for a, b in zip(busi, busi[1:], strict=False))
    assert busi[:2] == [38, MIN_BATCH]  # 150 left: a quarter of it, then at least 32
    assert busi[-3:-1] == [MIN_BATCH, MIN_BATCH] and busi[-1] <= MIN_BATCH
    # The same cases give the same batches (a resumed build finds its own).
    again = list(plan_extract(iter(discovered), 64, tmp_path))
    assert [j.cases for j in again] == [j.cases for j in jobs]


def test_batches_near_the_end_share_the_bytes_left_not_the_cases(tmp_path: Path) -> None:
    """Near the build's end a batch takes a quarter of the work left, a case's work being
    the bytes of its files: a source whose cases cost ten times more gets batches of fewer
    cases (at least MIN_BATCH), so the last tasks stay short whatever the sources hold."""
    from pipeline.build.run import MIN_BATCH, case_bytes, plan_extract
    from pipeline.sources.base import Case, MaskFile

    discovered = []
    for name, count, size in (("kvasir_seg", 150, 1000), ("busi", 150, 10)):
        request = SourceRequest(REGISTRY[name], tmp_path)
        for i in range(count):
            image, mask = tmp_path / f"{name}{i}.png", tmp_path / f"{name}{i}_mask.png"
            image.write_bytes(bytes(size - 4))
            mask.write_bytes(bytes(4))
            case = Case(name, f"c{i}", f"p{i}", image, (MaskFile(mask, target="lesion"),))
            discovered.append((request, case))
    assert case_bytes(discovered[0][1]) == 1000
    sizes = [(job.source.name, len(job.cases)) for job in plan_extract(discovered, 64, tmp_path)]
    # 300 cases, a horizon of 256: the first batch is a whole one. Then 86 heavy cases
    # (86,000 bytes) and 150 light ones (1,500) are left: a quarter of the bytes is 22
    # heavy cases, so MIN_BATCH; the light source's 1,500 bytes, 38 of its cases.
    assert MIN_BATCH == 32
    assert [n for name, n in sizes if name == "kvasir_seg"] == [64, 32, 32, 22]
    assert [n for name, n in sizes if name == "busi"] == [38, 32, 32, 32, 16]


def test_a_cases_work_counts_a_series_folder_and_not_a_missing_file(tmp_path: Path) -> None:
    from pipeline.build.run import case_bytes
    from pipeline.sources.base import Case, MaskFile

    series = tmp_path / "series"
    (series / "nested").mkdir(parents=True)
    for index, size in enumerate((100, 250)):
        (series / f"{index}.dcm").write_bytes(bytes(size))
    (series / "nested" / "other.dcm").write_bytes(bytes(1000))  # not the series' own
    mask = MaskFile(tmp_path / "gone.png", target="lesion")
    assert case_bytes(Case("s", "c", "p", series, (mask,))) == 350


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_sources_shards_are_written_once_its_batches_are_rendered(
    demo_root: Path, tmp_path: Path, cached: bool
) -> None:
    """Shards stream: the first sources' are written while the last source renders (in a
    render task, or converted at once without a cache)."""
    events: list[str] = []

    def render(stage, jobs):
        for job in jobs:
            result = stage(job)
            events.append("render")
            yield result

    def shards(stage, jobs):
        for job in jobs:
            events.append("shard")
            yield stage(job)

    config = replace(
        _config(demo_root, tmp_path / "out", batch_size=2),
        cache_dir=tmp_path / "cache" if cached else None,
    )
    runners = {"run_render": render} if cached else {"run_extract": render}
    summary = run_build(config, run_shards=shards, **runners)
    assert validate(tmp_path / "out", checked=summary.checks).ok
    last = max(i for i, event in enumerate(events) if event == "render")
    assert "shard" in events[:last]  # kvasir's and busi's before montgomery's last batch
    assert events.count("shard") == len(_manifest(tmp_path / "out")["shards"])


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_a_part_goes_once_its_last_images_are_in_a_written_shard(
    demo_root: Path, tmp_path: Path, cached: bool
) -> None:
    """Without a cache, each shard finds the parts it takes from, and none that only
    earlier shards took from. A cache keeps every part (a later build takes them)."""
    seen: list[tuple[int, int]] = []  # per shard: parts taken before and not by it, alive

    def shards(stage, jobs):
        before: set[Path] = set()
        for job in jobs:
            taken = {path for path, _ in job.pieces}
            alive = set(job.store.rglob("*.arrows"))
            assert taken <= alive
            seen.append((len(before - taken), len((before - taken) & alive)))
            before |= taken
            yield stage(job)

    config = replace(
        _config(demo_root, tmp_path / "out", batch_size=3, max_shard_bytes=150_000),
        cache_dir=tmp_path / "cache" if cached else None,
    )
    summary = run_build(config, run_shards=shards)
    assert validate(tmp_path / "out", checked=summary.checks).ok
    assert len(seen) == len(_manifest(tmp_path / "out")["shards"])
    assert sum(done for done, _ in seen) > 0  # parts were finished before the last shard
    if cached:
        assert all(alive == done for done, alive in seen)
    else:
        assert all(alive == 0 for _, alive in seen)


def test_the_count_figures_are_drawn_while_the_last_shards_are_written(
    demo_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """Once every batch is rendered, the figures of the rows' counts are drawn beside the
    last source's shards; the gallery, which reads shards, after them."""
    import pipeline.release.plots as plots

    events: list[str] = []
    draw, gallery = plots.write_count_plots, plots.gallery

    def drawn(stats, out):
        events.append(f"counts on {threading.current_thread().name}")
        return draw(stats, out)

    def shown(shards, path):
        events.append("gallery")
        gallery(shards, path)

    def shards(stage, jobs):
        for job in jobs:
            events.append("shard")
            yield stage(job)

    monkeypatch.setattr(plots, "write_count_plots", drawn)
    monkeypatch.setattr(plots, "gallery", shown)
    config = _config(demo_root, tmp_path / "out", batch_size=2)
    run_build(config, run_shards=shards)
    counts = next(i for i, event in enumerate(events) if event.startswith("counts"))
    assert events[counts].startswith("counts on mmrs-figures")  # beside the shards' writing
    assert counts > events.index("shard")  # once the last source is rendered: after others'
    assert events.index("gallery") == len(events) - 1
    files = _manifest(tmp_path / "out")["files"]
    assert {"plots/zones.png", "plots/sizes.png", "plots/gallery.png"} <= set(files)
