"""`mmrs build --rewrite` through the Prefect flow, and where the API key may never appear."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, Scripted

from pipeline.cli import main

KEY = "sk-mmrs-FAKE-a81d3c77e09b-never-in-outputs"
SECRET_KEY = "sk-mmrs-FAKE-2b6e44f1c5d0-from-a-secret-block"


@pytest.fixture()
def data(tmp_path) -> Path:
    from pipeline.demo import write_kvasir

    write_kvasir(tmp_path / "data", 6, size=(120, 96))
    return tmp_path / "data" / "Kvasir-SEG"


class _Everything(logging.Handler):
    """Every log record of every logger, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def logs():
    """Every record of every logger at DEBUG; the handlers already there are kept quiet
    meanwhile (Prefect's console handler may hold a stream an earlier test closed)."""
    handler = _Everything()
    loggers = [logging.getLogger(name) for name in ("", "prefect", "openai", "httpx", "pipeline")]
    levels = [logger.level for logger in loggers]
    others = [(h, h.level) for logger in loggers for h in logger.handlers]
    for other, _ in others:
        other.setLevel(logging.CRITICAL + 1)
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.lines
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)
    for other, level in others:
        other.setLevel(level)


def _files_holding(key: str, *folders: Path) -> list[Path]:
    return [
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and key.encode() in path.read_bytes()
    ]


def test_cli_build_rewrites_and_the_key_is_nowhere(
    prefect_api, data, tmp_path, monkeypatch, logs
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with FakeOpenAI() as fake:
        fake.script.extend(
            [Scripted(500, body='{"error": "boom"}'), Scripted(429, headers={"retry-after": "0.1"})]
        )
        stdout, stderr = io.StringIO(), io.StringIO()  # never closed: Prefect may keep them
        with redirect_stdout(stdout), redirect_stderr(stderr):
            code = main(
                [
                    "build", "-q", "--source", f"kvasir_seg={data}", "--out", str(out),
                    "--cache-dir", str(cache), "--batch-size", "3", "--rewrite", "paraphrase",
                    "--llm-model", "fake-model", "--llm-base-url", fake.base_url,
                    "--llm-price-in", "2.5", "--llm-price-out", "10",
                ]
            )  # fmt: skip
        assert fake.authorizations == {f"Bearer {KEY}"}
    assert code == 0, stderr.getvalue()
    assert "rewrite paraphrase with fake-model" in stdout.getvalue()
    assert "(retries 2, 429s 1, failed 0)" in stdout.getvalue()
    assert _files_holding(KEY, out, cache) == []
    assert KEY not in stdout.getvalue() + stderr.getvalue()
    assert logs and not [line for line in logs if KEY in line]


def test_flow_reads_the_key_from_a_secret_block(
    prefect_api, data, tmp_path, monkeypatch, logs
) -> None:
    from prefect.blocks.system import Secret

    from flows import build_mmrs

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    Secret(value=SECRET_KEY).save("mmrs-test-llm-key", overwrite=True)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with FakeOpenAI() as fake:
        result = build_mmrs(
            [f"kvasir_seg={data}"], str(out), cache_dir=str(cache), rewrite="paraphrase",
            llm_model="fake-model", llm_base_url=fake.base_url,
            llm_api_key_secret="mmrs-test-llm-key",
        )  # fmt: skip
        assert fake.authorizations == {f"Bearer {SECRET_KEY}"}
    assert result["validation"]["ok"]
    assert set(result["summary"]["rewrite"]["statuses"]) == {"accepted"}
    assert _files_holding(SECRET_KEY, out, cache) == []
    assert not [line for line in logs if SECRET_KEY in line]


def test_cli_rewrite_errors_are_one_line(tmp_path, data, monkeypatch, capsys) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = ["build", "--source", f"kvasir_seg={data}", "--out", str(tmp_path / "out")]
    assert main([*base, "--rewrite", "paraphrase", "--llm-model", "m"]) == 2
    assert "set OPENAI_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main([*base, "--rewrite", "paraphrase"]) == 2
    assert "needs --llm-model" in capsys.readouterr().err
    assert (
        main([*base, "--rewrite", "paraphrase", "--llm-model", "m", "--llm-concurrency", "0"]) == 2
    )
    assert "concurrency=0" in capsys.readouterr().err
