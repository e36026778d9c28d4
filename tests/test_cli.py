"""The `mmrs` command line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.build import workers as orchestration
from pipeline.build.run import BuildConfig, BuildError, SourceRequest, build
from pipeline.build.stages import convert_batch, extract_batch
from pipeline.cli import main
from pipeline.demo import write_busi, write_kvasir
from pipeline.sources import REGISTRY

PROJECT = Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "--batch-size: must be a whole number of at least 1, got '0'"),
        (["--batch-size", "-5"], "--batch-size: must be a whole number of at least 1"),
        (["--workers", "0"], "--workers: must be a whole number of at least 1"),
    ],
)
def test_numeric_arguments_are_checked_before_anything_starts(
    tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--source", f"kvasir_seg={tmp_path}", "--out", str(tmp_path / "o"), *extra])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_folder_and_slice_arguments_are_checked_before_anything_starts(
    tmp_path: Path, capsys
) -> None:
    """A file where a folder goes (output, cache, templates, data root, or a folder above
    one of them), and a slice policy out of range even where no source is a volume, are a
    one-line error before any work, with the library's own check for callers of the flow."""
    data = write_kvasir(tmp_path, 2, size=(40, 40))
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    source, out = f"kvasir_seg={data}", str(tmp_path / "out")
    cases = {
        (source, str(a_file)): f"--out {a_file} is a file, not a folder",
        (source, str(a_file / "out")): f"--out {a_file / 'out'}: {a_file} is a file, not a folder",
        (source, out, "--cache-dir", str(a_file)): f"--cache-dir {a_file} is a file, not a folder",
        (source, out, "--templates", str(a_file)): f"--templates {a_file} is not a folder",
        (f"kvasir_seg={a_file}", out): f"data root {a_file} for kvasir_seg is not a folder",
        (source, out, "--slices", "largest:0"): "slices must be all, largest[:K] or stride[:N]",
    }
    for (source_arg, out_arg, *extra), message in cases.items():
        assert main(["build", "--source", source_arg, "--out", out_arg, *extra, "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmrs: error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Kvasir-SEG", "a_file"]
    request = (SourceRequest(REGISTRY["kvasir_seg"], data),)
    with pytest.raises(BuildError, match="--batch-size must be at least 1, got 0"):
        build(BuildConfig(request, tmp_path / "out", batch_size=0))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "build", "-q", *args]  # as `mmrs` runs


def test_ctrl_c_is_one_line_and_exit_status_130(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import cli

    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_build", interrupted)
    data = write_kvasir(tmp_path, 1, size=(40, 40))
    try:
        status = cli.main(["build", "--source", f"kvasir_seg={data}", "--out", str(tmp_path)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C reached the shell as a traceback")
    assert status == 130
    assert capsys.readouterr().err == "mmrs: interrupted\n"


def _running(group: int) -> list[str]:
    """The processes of a process group that have not exited (zombies left out)."""
    listed = subprocess.run(
        ["ps", "-o", "stat=,args=", "-g", str(group)], capture_output=True, text=True
    ).stdout.splitlines()
    return [line for line in listed if line.strip() and not line.lstrip().startswith("Z")]


def _ctrl_c_once_the_flow_runs(
    command: list[str], env: dict[str, str], out: Path, start_timeout: float
) -> tuple[subprocess.Popen, str, float, list[str]]:
    """Run a build in a process group of its own and, once its flow has made the staging
    folder beside out, send SIGINT to the group as a terminal's Ctrl-C does. Returns the
    ended process, its stderr, the seconds it took to end, and the group's processes
    still running 10 s after the signal."""
    build_process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + start_timeout
        staging = out.parent / f".{out.name}.partial"
        while not staging.exists() and build_process.poll() is None:
            assert time.monotonic() < deadline, "the flow did not start"
            time.sleep(0.02)
        assert build_process.poll() is None, build_process.communicate()[1]
        os.killpg(build_process.pid, signal.SIGINT)
        interrupted = time.monotonic()
        _, err = build_process.communicate(timeout=120)
        waited = time.monotonic() - interrupted
        while _running(build_process.pid) and time.monotonic() < interrupted + 10:
            time.sleep(0.05)
        return build_process, err, waited, _running(build_process.pid)
    finally:
        if build_process.poll() is None or _running(build_process.pid):
            os.killpg(build_process.pid, signal.SIGKILL)
            build_process.communicate()


def test_ctrl_c_stops_a_build_on_prefects_embedded_server_at_once(tmp_path: Path) -> None:
    """Without PREFECT_API_URL the build runs on Prefect's embedded server. A terminal's
    Ctrl-C (SIGINT to the whole process group) once the flow runs ends the build at once
    with its one line, and leaves no process behind: the server, which must outlive the
    signal to record the run's end, is stopped as the command exits."""
    data = write_kvasir(tmp_path, 300)
    out = tmp_path / "out"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # the server's own database
    command = _cli("--source", f"kvasir_seg={data}", "--out", str(out), "--no-cache")
    # a new database takes the server a while
    build_process, err, waited, running = _ctrl_c_once_the_flow_runs(command, env, out, 180)
    assert build_process.returncode == 130, err
    assert err.endswith("mmrs: interrupted\n") and "Traceback" not in err, err
    assert waited < 15, f"{waited:.1f} s after Ctrl-C"
    # Nothing of the command's group runs on: the server, nor the worker started ahead and
    # its fork server (multiprocessing's own servers end a moment after the command).
    assert running == []
    assert not out.exists()


def test_ctrl_c_reaches_the_workers_and_stops_them_quietly(
    tmp_path: Path, prefect_api: str
) -> None:
    """A terminal's Ctrl-C reaches the worker processes too. With more workers than
    batches some are idle: each worker ends without a traceback and takes no further job,
    the command prints its one line, and nothing is left beside the output folder (the
    pool's fork server ends just after the command)."""
    data = write_kvasir(tmp_path, 40, size=(1000, 800))  # two batches for four workers
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    command = _cli("--source", f"kvasir_seg={data}", "--out", str(out), "--no-cache",
                   "--workers", "4")  # fmt: skip
    build_process, err, waited, left = _ctrl_c_once_the_flow_runs(command, env, out, 120)
    assert build_process.returncode == 130, err
    assert err == "mmrs: interrupted\n", err
    assert waited < 15, f"{waited:.1f} s after Ctrl-C"
    assert not left, left
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Kvasir-SEG"]


def test_errors_inside_the_flow_are_one_line_unless_verbose(
    tmp_path: Path, prefect_api: str
) -> None:
    """--strict's first bad case is found inside the flow: the user gets the one line, and
    Prefect's traceback only with -v."""
    data = write_kvasir(tmp_path, 3, size=(40, 40))
    (data / "images" / "demo00001.jpg").write_bytes(b"not an image")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    args = ["--source", f"kvasir_seg={data}", "--out", str(tmp_path / "out"), "--strict"]
    quiet = subprocess.run(_cli(*args), env=env, capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.startswith("mmrs: error: kvasir_seg: images/demo00001.jpg: ")
    assert quiet.stderr.endswith("(--strict)\n")
    assert quiet.stderr.count("\n") == 1, quiet.stderr
    verbose = subprocess.run(_cli(*args, "-v"), env=env, capture_output=True, text=True)
    assert verbose.returncode == 2
    # Prefect may still log after the error (its services flush at exit): -v shows it all
    assert "Traceback" in verbose.stderr and quiet.stderr in verbose.stderr


def test_prefects_shutdown_notes_stay_off_the_quiet_console() -> None:
    """At exit Prefect's event and log services may note that they are still sending items;
    without -v the user's console keeps its one error line."""
    from pipeline.cli import ENGINE_NOISE

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert not ENGINE_NOISE.filter(
        record("EventsWorker", logging.WARNING, "Still processing items: 2 items remaining...")
    )
    assert not ENGINE_NOISE.filter(record("prefect.flow_runs", logging.ERROR, "Finished in state"))
    assert ENGINE_NOISE.filter(record("EventsWorker", logging.WARNING, "queue is full, dropping"))
    assert ENGINE_NOISE.filter(record("prefect.flow_runs", logging.WARNING, "a warning"))


def test_two_builds_at_once_one_folder_is_refused_and_one_cache_serves_both(
    tmp_path: Path, prefect_api: str
) -> None:
    """Real processes: a second build into the folder a build is writing is refused at
    once with a clear message, and the first ends well; two builds into two folders with
    one cache, started together, both end well with the same files."""
    data = write_kvasir(tmp_path, 16, size=(160, 128))
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def command(out: str, cache: str) -> list[str]:
        return _cli("--source", f"kvasir_seg={data}", "--out", str(tmp_path / out),
                    "--cache-dir", str(tmp_path / cache), "--batch-size", "2")  # fmt: skip

    first = subprocess.Popen(command("out", "cache"), env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / ".out.lock").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = subprocess.run(command("out", "cache"), env=env, capture_output=True, text=True)
        assert first.poll() is None, "the first build ended before the second was refused"
    finally:
        first.wait()
    assert second.returncode == 2
    assert second.stderr == (
        f"mmrs: error: another build is writing {tmp_path / 'out'} (wait for it to end, or "
        "choose another --out)\n"
    )
    assert first.returncode == 0

    together = [
        subprocess.Popen(command(out, "shared"), env=env, stdout=subprocess.DEVNULL)
        for out in ("a", "b")
    ]
    assert [process.wait() for process in together] == [0, 0]
    files = [json.loads((tmp_path / out / "manifest.json").read_text())["files"] for out in "ab"]
    assert (
        files[0]
        == files[1]
        == json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "Kvasir-SEG",
        "a",
        "b",
        "cache",
        "out",
        "shared",
    ]


def test_validate_fails_on_a_folder_that_is_not_a_build(
    tmp_path: Path, capsys, prefect_api
) -> None:
    assert main(["validate", str(tmp_path), "-q"]) == 1
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
def test_workers_start_the_first_batches_while_prefect_starts(
    tmp_path: Path, capsys, prefect_api, monkeypatch, cached: bool, workers: int
) -> None:
    """The first 2 batches per worker are converted (with a cache: extracted) on the
    workers before the flow asks for them, with one worker too (it converts the rest in
    its own process); the flow takes those results, and a scratch store made for them is
    removed."""
    write_busi(tmp_path / "data", 9)
    taken = []
    started_ahead = orchestration._started_ahead
    first = extract_batch if cached else convert_batch  # render tasks ask too, later

    def record(stage, job):
        future = started_ahead(stage, job)
        if stage is first:
            index = job.index if cached else job.extract.index
            taken.append((index, future is not None))
        return future

    monkeypatch.setattr(orchestration, "_started_ahead", record)
    out = tmp_path / "out"
    store = ["--cache-dir", str(tmp_path / "cache")] if cached else ["--no-cache"]
    args = ["build", "--source", f"busi={tmp_path / 'data'}", "--out", str(out), "-q"]
    args += ["--workers", str(workers), *store, "--batch-size", "2"]
    assert main(args) == 0
    assert "valid:" in capsys.readouterr().out
    assert sorted(index for index, ahead in taken if ahead) == list(range(2 * workers))
    assert len(taken) > 2 * workers
    kept = ["cache", "data", "out"] if cached else ["data", "out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    single = tmp_path / "single"  # the default: one worker
    assert main([*args[:4], str(single), "-q", "--no-cache", "--batch-size", "3"]) == 0
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


@pytest.mark.parametrize(
    ("argv", "early"),
    [
        (["build", "--source", "busi=data", "--out", "out"], True),  # one worker
        (["build", "--out", "out", "--workers=3", "--no-cache"], True),
        (["validate", "out"], False),  # one worker: the folder is checked in the command
        (["validate", "out", "--workers", "2"], True),
        (["build", "--out", "out", "--runner", "dask"], False),
        (["build", "--out", "out", "--dask-address", "tcp://127.0.0.1:8786"], False),
        (["build", "--help"], False),
        (["publish", "out", "--workers", "2"], False),
        (["build", "--workers", "none"], False),  # the command's own parser says why
        (["build", "--runner", "spark"], False),
        ([], False),
    ],
)
def test_the_entry_starts_the_fork_server_only_for_commands_that_fork_workers(
    argv: list[str], early: bool, capsys
) -> None:
    from pipeline.__main__ import starts_workers_early

    assert starts_workers_early(argv) is early
    assert capsys.readouterr() == ("", "")


def test_the_command_starts_without_scipy_or_matplotlib() -> None:
    """Neither is needed before a build's workers start (they import scipy) or its card."""
    code = "import sys, pipeline.cli; print(sorted({'scipy', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
