"""The deployment cycle end to end: a Prefect server on 127.0.0.1, a process work pool,
`prefect deploy --all`, a worker, and `prefect deployment run` of build-mmrs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.demo import write_busi

PROJECT = Path(__file__).resolve().parents[1]
PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(process: subprocess.Popen, interrupts: int) -> None:
    """Stop a process group by its PID: SIGINT as many times as it needs, then SIGKILL."""
    for _ in range(interrupts):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture()
def server(tmp_path: Path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "Prefect server did not start in 120 s"
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url, "MMRS_PROJECT_DIR": str(PROJECT)}
    finally:
        _stop(process, interrupts=1)
        log.close()


def test_deploy_and_run_build_through_a_worker(server: dict, tmp_path: Path) -> None:
    def prefect(*args: str) -> str:
        done = subprocess.run(
            [PREFECT, *args],
            env=server,
            cwd=PROJECT,
            capture_output=True,
            # Prefect prints box-drawing characters; CI's locale may be ASCII
            encoding="utf-8",
            errors="replace",
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    prefect("work-pool", "create", "mmrs-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--all")
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "mmrs-process"],
        env=server,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        write_busi(tmp_path / "data", 6, size=(96, 80))
        out = tmp_path / "out"
        sources = json.dumps([f"busi={tmp_path / 'data'}"])
        prefect(
            "deployment",
            "run",
            "build-mmrs/default",
            "--watch",
            "--param",
            f"sources={sources}",
            "--param",
            f"out={out}",
            "--param",
            "cache=false",
        )
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["counts"]["busi"]["converted"] == 6
        prefect("deployment", "run", "validate-mmrs/default", "--watch", "--param", f"folder={out}")
    finally:
        _stop(worker, interrupts=2)  # a Prefect worker needs two SIGINTs
        log.close()
