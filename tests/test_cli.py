"""The `mmrs` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.build import workers as orchestration
from pipeline.build.stages import extract_batch
from pipeline.cli import main
from pipeline.demo import write_busi


def test_sources_lists_the_registry(capsys) -> None:
    assert main(["sources"]) == 0
    text = capsys.readouterr().out
    for name in (
        "kvasir_seg",
        "cvc_clinicdb",
        "isic2018",
        "ph2",
        "busi",
        "montgomery",
        "covid_qu_ex",
    ):
        assert name in text
    assert main(["sources", "--json"]) == 0
    registry = json.loads(capsys.readouterr().out)
    assert registry["busi"]["modality"] == "ultrasound"


def test_build_then_validate(tmp_path: Path, capsys, prefect_api) -> None:
    write_busi(tmp_path, 6)
    out = tmp_path / "out"
    # The data root may be the class folders' parent or the folder above it.
    assert (
        main(["build", "--source", "busi", "--data-root", str(tmp_path), "--out", str(out), "-q"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "busi" in printed and "valid:" in printed
    assert main(["validate", str(out), "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_bad_arguments_get_one_line_errors(tmp_path: Path, capsys) -> None:
    assert main(["build", "--source", "nope=.", "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmrs: error: unknown source 'nope'") and err.count("\n") == 1
    assert (
        main(["build", "--source", f"busi={tmp_path / 'missing'}", "--out", str(tmp_path / "o")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert main(["build", "--source", "busi", "--out", str(tmp_path / "o")]) == 2
    assert "DATA_ROOT" in capsys.readouterr().err
    assert main(["build", "--source", "busi=.", "--split-ratios", "0.5,0.5", "--out", "o"]) == 2
    assert "split ratios" in capsys.readouterr().err


def test_validate_fails_on_a_folder_that_is_not_a_build(
    tmp_path: Path, capsys, prefect_api
) -> None:
    assert main(["validate", str(tmp_path), "-q"]) == 1
    assert "no manifest.json" in capsys.readouterr().err


def test_workers_extract_the_first_batches_while_prefect_starts(
    tmp_path: Path, capsys, prefect_api, monkeypatch
) -> None:
    """With --workers 2, the first 2 batches per worker are extracted before the flow asks
    for them; the flow takes those results, and the scratch store is removed."""
    write_busi(tmp_path / "data", 9)
    taken = []
    started_ahead = orchestration._started_ahead

    def record(stage, job):
        future = started_ahead(stage, job)
        if stage is extract_batch:  # render tasks ask too, interleaved with extract's
            taken.append((job.index, future is not None))
        return future

    monkeypatch.setattr(orchestration, "_started_ahead", record)
    out = tmp_path / "out"
    args = ["build", "--source", f"busi={tmp_path / 'data'}", "--out", str(out), "-q"]
    args += ["--workers", "2", "--no-cache", "--batch-size", "2"]
    assert main(args) == 0
    assert "valid:" in capsys.readouterr().out
    assert sorted(index for index, ahead in taken if ahead) == [0, 1, 2, 3]
    assert len(taken) > 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    single = tmp_path / "single"
    assert main([*args[:4], str(single), "-q", "--no-cache", "--batch-size", "2"]) == 0
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert files == json.loads((single / "manifest.json").read_text())["files"]


def test_a_wrong_layout_found_while_the_workers_start_leaves_nothing_behind(
    tmp_path: Path, capsys
) -> None:
    """The first batches are planned for the workers as discovery goes: a data root of the
    wrong layout is the usual one-line error, and the scratch store made for them is gone."""
    (tmp_path / "data" / "unrelated").mkdir(parents=True)
    out = tmp_path / "out"
    args = ["build", "--source", f"busi={tmp_path / 'data'}", "--out", str(out), "-q"]
    assert main([*args, "--workers", "2", "--no-cache"]) == 2
    assert "busi: data root" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_the_command_starts_without_scipy_or_matplotlib() -> None:
    """Neither is needed before a build's workers start (they import scipy) or its card."""
    code = "import sys, pipeline.cli; print(sorted({'scipy', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
