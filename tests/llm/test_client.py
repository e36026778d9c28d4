"""The LLM client against a local OpenAI-compatible server: retries, limits, account, budget."""

from __future__ import annotations

import time

import pytest
from fake_openai import FakeOpenAI, Scripted, completion

from pipeline.llm.cache import AnswerCache, answer_key
from pipeline.llm.client import BudgetExhausted, LLMClient, LLMFailure, LLMSettings

KEY = "sk-mmrs-test-llm-0123456789"


def _client(fake: FakeOpenAI, **settings) -> LLMClient:
    return LLMClient(
        LLMSettings("fake-model", base_url=fake.base_url, backoff_s=0.01, **settings), KEY
    )


def test_success_counts_tokens_and_cost() -> None:
    with FakeOpenAI(lambda prompt: f"echo {prompt}") as fake:
        client = _client(fake, price_in=2.0, price_out=8.0)
        assert client.complete("hello").text == "echo hello"
    account = client.account
    assert (account.requests, account.input_tokens, account.output_tokens) == (1, 100, 20)
    assert account.cost_usd == pytest.approx((100 * 2.0 + 20 * 8.0) / 1e6)
    assert fake.authorizations == {f"Bearer {KEY}"}


def test_429_waits_for_retry_after() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        fake.script.append(Scripted(429, body="{}", headers={"retry-after": "0.4"}))
        client = _client(fake)
        start = time.perf_counter()
        assert client.complete("x").text == "ok"
        waited = time.perf_counter() - start
    assert waited >= 0.4
    assert (client.account.requests, client.account.retries, client.account.rate_limited) == (
        2,
        1,
        1,
    )


def test_5xx_then_success_and_5xx_for_good() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        fake.script.extend([Scripted(500, body="{}"), Scripted(503, body="{}")])
        client = _client(fake, max_retries=2)
        assert client.complete("x").text == "ok"
        assert client.account.retries == 2
        fake.script.extend([Scripted(502, body="{}")] * 3)
        with pytest.raises(LLMFailure) as failure:
            client.complete("y")
    assert failure.value.code == "http-502"
    assert client.account.by_error == {"http-502": 1}
    assert KEY not in str(failure.value)


def test_timeout_is_retried() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        fake.script.append(Scripted(delay=1.5))
        client = _client(fake, timeout_s=0.3)
        assert client.complete("x").text == "ok"
        assert client.account.retries == 1
        fake.script.extend([Scripted(delay=1.5), Scripted(delay=1.5)])
        with pytest.raises(LLMFailure) as failure:
            _client(fake, timeout_s=0.3, max_retries=1).complete("y")
    assert failure.value.code == "timeout"


def test_a_refused_key_stops_every_later_request() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        fake.script.append(Scripted(401, body='{"error": {"message": "bad key"}}'))
        client = _client(fake)
        for _ in range(3):
            with pytest.raises(LLMFailure, match="http-401"):
                client.complete("x")
        assert fake.requests == 1


def test_budget_is_never_exceeded() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        # Each request books 8 + 400 tokens at worst and really uses 120.
        client = _client(fake, budget_tokens=500)
        client.complete("a")
        with pytest.raises(BudgetExhausted):
            client.complete("b")
        assert fake.requests == 1
        cost = _client(fake, price_in=1e6, price_out=0.0, budget_usd=105.0)
        cost.complete("c")  # books <= 8 input tokens at $1 each, spends 100
        with pytest.raises(BudgetExhausted):
            cost.complete("d")
    assert cost.account.cost_usd == pytest.approx(100.0)
    assert cost.account.budget_skips == 1


def test_rate_limit_spaces_request_starts() -> None:
    with FakeOpenAI(lambda prompt: "ok") as fake:
        client = _client(fake, requests_per_minute=600)  # one each 0.1 s
        start = time.perf_counter()
        for _ in range(4):
            client.complete("x")
        assert time.perf_counter() - start >= 0.3


def test_settings_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="concurrency=0"):
        LLMSettings("m", concurrency=0)
    with pytest.raises(ValueError, match="model name"):
        LLMSettings(" ")


def test_missing_key_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMClient(LLMSettings("m", base_url="http://127.0.0.1:9/v1"))


def test_cache_asks_each_question_once(tmp_path) -> None:
    cache = AnswerCache(tmp_path)
    asked = []

    def ask():
        asked.append(1)
        from pipeline.llm.client import Completion

        return Completion("answer", 1, 1)

    key = answer_key("m", "v1", "question")
    assert cache.get_or_ask(key, "m", "v1", ask) == ("answer", False)
    assert cache.get_or_ask(key, "m", "v1", ask) == ("answer", True)
    assert asked == [1]
    assert answer_key("m", "v2", "question") != key
    assert answer_key("other", "v1", "question") != key
    assert completion("x")["choices"][0]["message"]["content"] == "x"
