"""Builds with LLM rewriting against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_openai import FakeOpenAI, Scripted, input_pair, polite

from pipeline.build.run import BuildConfig, build, parse_source_arg
from pipeline.checks.folder import validate
from pipeline.llm.paraphrase import rewrite_config
from pipeline.qa.templates import FAMILIES, load_templates

PROJECT = Path(__file__).resolve().parents[2]
KEY = "sk-mmrs-FAKE-5f0c2b9e7d41-rewrite-key"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pipeline.demo import write_busi, write_kvasir

    root = tmp_path_factory.mktemp("rewrite-data")
    write_kvasir(root, 8, size=(120, 96))
    write_busi(root, 6, size=(120, 96))
    return root


@pytest.fixture(autouse=True)
def api_key(monkeypatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return KEY


def _config(data: Path, out: Path, fake: FakeOpenAI, cache: Path | None, **llm) -> BuildConfig:
    llm = {"retries": 1, **llm}
    mode = llm.pop("mode", "paraphrase")
    return BuildConfig(
        sources=(
            parse_source_arg(f"kvasir_seg={data / 'Kvasir-SEG'}"),
            parse_source_arg(f"busi={data / 'Dataset_BUSI_with_GT'}"),
        ),
        out=out,
        progress=False,
        batch_size=4,
        cache_dir=cache,
        overwrite=True,
        templates_dir=llm.pop("templates", None),
        rewrite=rewrite_config(mode, "fake-model", fake.base_url, **llm),
    )


def _rows(out: Path) -> list[dict]:
    columns = ["question", "answer", "question_type", "rewrite", "template_id"]
    return [
        row
        for shard in sorted((out / "data").glob("*.parquet"))
        for row in pq.read_table(shard, columns=columns).to_pylist()
    ]


def _data_files(out: Path) -> dict[str, str]:
    files = json.loads((out / "manifest.json").read_text())["files"]
    return {name: digest for name, digest in files.items() if name.startswith("data/")}


def test_paraphrase_build_then_cached_rebuilds_ask_nothing(data, tmp_path) -> None:
    cache = tmp_path / "cache"
    with FakeOpenAI() as fake:
        first = build(_config(data, tmp_path / "a", fake, cache))
        asked = fake.requests
        rows = _rows(tmp_path / "a")
        assert validate(tmp_path / "a").ok
        assert {row["rewrite"]["status"] for row in rows} == {"accepted"}
        assert all(row["question"].startswith("Looking at this picture: ") for row in rows)
        assert {row["rewrite"]["model"] for row in rows} == {"fake-model"}
        assert 0 < asked <= len(rows)  # identical pairs are asked once
        assert first.llm_usage["requests"] == asked
        manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
        assert manifest["rewrite"]["statuses"] == {"accepted": len(rows)}
        assert manifest["llm_usage"]["requests"] == asked

        second = build(_config(data, tmp_path / "b", fake, cache))
        shutil.rmtree(cache / "rewrite")  # stage results gone: only the answer cache is left
        third = build(_config(data, tmp_path / "c", fake, cache))
        assert fake.requests == asked  # neither re-run sent a request
    assert third.llm_usage["cache_hits"] > 0 and third.llm_usage["requests"] == 0
    assert second.rewrite == third.rewrite == first.rewrite
    assert _data_files(tmp_path / "a") == _data_files(tmp_path / "b") == _data_files(tmp_path / "c")
    for name in ("report.json", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()


def _question_type(prompt: str) -> str:
    return re.search(r"Keep the (.+?) question a question", prompt).group(1).replace(" ", "_")


def _mischief(prompt: str) -> str:
    """Good rewrites for some families, each kind of bad one for the others."""
    pair, kind = input_pair(prompt), _question_type(prompt)
    question, answer = pair["question"], pair["answer"]
    if kind == "position":  # left <-> right, or no position at all
        swapped = re.sub(r"\b(left|right)\b", lambda m: {"left": "right"}.get(m[1], "left"), answer)
        answer = swapped if swapped != answer else "The target is clearly visible."
    elif kind == "size":
        answer += " It lies on the patient's left."
    elif kind == "count":
        return "Sure! The question is: " + question
    elif kind == "prsmed":
        answer = "It can be seen in the image."
    else:
        return polite(prompt)
    return json.dumps({"question": question, "answer": answer})


def test_the_guard_rejects_changed_facts_and_the_template_stays(data, tmp_path) -> None:
    with FakeOpenAI(_mischief) as fake:
        summary = build(_config(data, tmp_path / "out", fake, None))
    assert validate(tmp_path / "out").ok
    rows = _rows(tmp_path / "out")
    statuses = Counter(row["rewrite"]["status"] for row in rows)
    assert summary.rewrite["statuses"] == dict(sorted(statuses.items()))
    by_type: dict[str, set[str]] = {}
    for row in rows:
        by_type.setdefault(row["question_type"], set()).add(row["rewrite"]["status"])
        if row["rewrite"]["status"] != "accepted":
            assert not row["question"].startswith("Looking at this picture")
    assert by_type["position"] <= {"rejected:changed-position", "rejected:dropped-position"}
    assert "rejected:changed-position" in by_type["position"]  # left turned into right
    assert by_type["size"] == {"rejected:unknown-side"}
    assert by_type["count"] == {"rejected:malformed"}
    assert by_type["prsmed"] == {"rejected:dropped-position"}
    assert by_type["verification"] == {"accepted"}
    rejected = summary.rewrite["rejected"]
    assert rejected["malformed"] == statuses["rejected:malformed"]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rewrite"]["rejected"] == rejected


def _answers(cache: Path) -> int:
    """Answers kept in a build cache's LLM answer store."""
    return len(list((cache / "llm").glob("*/*.json")))


def test_budget_exhaustion_falls_back_to_templates(data, tmp_path) -> None:
    cache = tmp_path / "cache"
    with FakeOpenAI() as fake:
        summary = build(_config(data, tmp_path / "out", fake, cache, budget_tokens=8000))
        statuses = summary.rewrite["statuses"]
        assert statuses["skipped:budget"] > 0 and statuses["accepted"] > 0
        assert summary.llm_usage["budget_skips"] > 0
        used = summary.llm_usage["input_tokens"] + summary.llm_usage["output_tokens"]
        assert used <= 8000
        assert validate(tmp_path / "out").ok
        asked = fake.requests
        # Every answer received is kept (a batch answered whole is also kept whole, so the
        # re-run's cache hits depend on how the budget split the batches: not counted here).
        assert _answers(cache) == asked
        again = build(_config(data, tmp_path / "again", fake, cache))  # no cap: the rest
        assert set(again.rewrite["statuses"]) == {"accepted"}
        assert fake.requests == asked + again.llm_usage["requests"]
        assert _answers(cache) == fake.requests  # no question was asked twice


def test_failed_requests_are_recorded_and_asked_again_next_time(data, tmp_path) -> None:
    cache = tmp_path / "cache"
    with FakeOpenAI() as fake:
        fake.script.extend([Scripted(500, body="{}")] * 1000)
        failed = build(_config(data, tmp_path / "out", fake, cache, retries=0))
        assert set(failed.rewrite["statuses"]) == {"failed:http-500"}
        assert failed.llm_usage["errors"] == {"http-500": fake.requests}
        assert validate(tmp_path / "out").ok
        fake.script.clear()
        healed = build(_config(data, tmp_path / "out", fake, cache))
    assert set(healed.rewrite["statuses"]) == {"accepted"}


def _expansions(prompt: str) -> str:
    """For each template: a good variant, one with a placeholder lost, one adding a direction."""
    listed = prompt.split("Existing templates (JSON):\n", 1)[1].split("\n\nReply with", 1)[0]
    proposals = []
    for entry in json.loads(listed):
        good = {"question": f"Tell me, please: {entry['question']}", "answer": entry["answer"]}
        lost = {"question": entry["question"], "answer": "It is in the upper left."}
        text = f"{entry['question']} {entry['answer']}"
        word = next(w for w in ("left", "right", "upper", "lower") if w not in text)
        left = {"question": entry["question"] + f" Look to the {word}.", "answer": entry["answer"]}
        proposals += [{"based_on": entry["id"], **p} for p in (good, lost, left)]
    return "```json\n" + json.dumps({"templates": proposals}) + "\n```"


def test_expand_templates_keeps_only_variants_that_hold(data, tmp_path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT / "templates", templates, ignore=shutil.ignore_patterns("prompts"))
    cache = tmp_path / "cache"
    with FakeOpenAI(_expansions) as fake:
        config = _config(
            data, tmp_path / "out", fake, cache, mode="expand-templates", templates=templates
        )
        summary = build(config)
        assert fake.requests == len(FAMILIES)  # one per family
        expansion = summary.llm_usage["expansion"]
        for outcome in expansion.values():
            kept = outcome["kept"]
            assert outcome["proposed"] == 3 * kept
            # a lost placeholder, or (where the answer has none) the side it stated
            assert sum(outcome["rejected"].values()) == 2 * kept
            assert set(outcome["rejected"]) <= {"placeholders", "changed-position", "changed-side"}
        assert sum(outcome["kept"] for outcome in expansion.values()) == load_templates().count()
        assert summary.rewrite["generated_templates"] == {
            family: outcome["kept"] for family, outcome in expansion.items()
        }
        written = sorted(p.name for p in (templates / "generated").glob("*.yaml"))
        assert len(written) == len(FAMILIES)
        assert validate(tmp_path / "out").ok
        ids = {row["template_id"] for row in _rows(tmp_path / "out")}
        assert any("_llm_" in template_id for template_id in ids)
        again = build(config)
        assert fake.requests == len(FAMILIES)  # generated files exist: nothing asked again
    assert again.rewrite == summary.rewrite
    position = templates / "generated" / "position.yaml"
    position.write_text(position.read_text().replace("{{ zone }}", "the upper right", 1))
    with pytest.raises(ValueError, match="position.yaml: template position_llm_01"):
        build(config)


def test_paraphrases_of_volume_rows_keep_sides_and_relations(tmp_path) -> None:
    """CT phantoms: laterality, patient-side and relation rows are paraphrased and pass."""
    pytest.importorskip("SimpleITK")
    from pipeline.demo import write_msd_ct

    task = write_msd_ct(tmp_path, 1)
    with FakeOpenAI() as fake:
        config = BuildConfig(
            sources=(parse_source_arg(f"msd={task}"),),
            out=tmp_path / "out",
            progress=False,
            cache_dir=tmp_path / "cache",
            rewrite=rewrite_config("paraphrase", "fake-model", fake.base_url, retries=1),
        )
        summary = build(config)
    assert set(summary.rewrite["statuses"]) == {"accepted"}
    rows = pq.read_table(tmp_path / "out" / "data").to_pylist()
    kinds = {r["question_type"] for r in rows}
    assert {"laterality", "relation"} <= kinds
    assert {r["patient_side"] for r in rows if r["question_type"] == "laterality"} == {"right"}
    assert all(r["question"].startswith("Looking at this picture") for r in rows)
    assert validate(tmp_path / "out").ok
