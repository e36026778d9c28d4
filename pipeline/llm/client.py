"""A chat-completion client for any OpenAI-compatible endpoint, as someone paying expects.

- the openai client with its own retries off (max_retries=0): this module retries 429, 5xx,
  timeouts and dropped connections with exponential backoff, honouring retry-after;
- at most `concurrency` requests in flight and at most `requests_per_minute` started, for
  every thread of the process that shares the client;
- a per-build account of requests, retries, tokens and cost (prices per 1M tokens), and a
  budget cap (USD and/or tokens) that is never exceeded: a request is only sent when its
  worst-case cost (estimated input, `max_tokens` output) still fits;
- the API key comes from the caller or OPENAI_API_KEY and is never logged, stored or put in
  an error message: failures are reported as short codes ("http-500", "timeout").

openai is imported here only, lazily: the core install does not need it.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
MAX_RETRY_WAIT_S = 120.0  # a retry-after longer than this fails the request instead
# Client errors that no other request of this build can avoid: stop asking after one.
FATAL_STATUS = {401: "http-401", 403: "http-403", 404: "http-404"}


class LLMFailure(Exception):
    """A request that failed for good; `code` is short and safe to record ("http-500")."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class BudgetExhausted(LLMFailure):
    def __init__(self) -> None:
        super().__init__("budget")


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to ask. Holds no secret: the key is passed to LLMClient separately."""

    model: str
    base_url: str | None = None  # None: the openai default (api.openai.com or OPENAI_BASE_URL)
    concurrency: int = 8
    requests_per_minute: float | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0  # first wait without retry-after; doubles on each retry
    price_in: float = 0.0  # USD per 1M input tokens
    price_out: float = 0.0  # USD per 1M output tokens
    budget_usd: float | None = None
    budget_tokens: int | None = None
    max_tokens: int = 400
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise ValueError("an LLM model name is required (--llm-model)")
        checks = {
            "concurrency": self.concurrency >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_retries": self.max_retries >= 0,
            "backoff_s": self.backoff_s >= 0,
            "price_in": self.price_in >= 0,
            "price_out": self.price_out >= 0,
            "max_tokens": self.max_tokens >= 1,
            "requests_per_minute": self.requests_per_minute is None or self.requests_per_minute > 0,
            "budget_usd": self.budget_usd is None or self.budget_usd >= 0,
            "budget_tokens": self.budget_tokens is None or self.budget_tokens >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid LLM setting(s): {values}")


@dataclass
class Account:
    """What one build asked and spent (thread-safe through the client's lock)."""

    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    rate_limited: int = 0  # 429 answers
    failures: int = 0  # requests that failed for good
    cache_hits: int = 0
    budget_skips: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    by_error: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "failures": self.failures,
            "cache_hits": self.cache_hits,
            "budget_skips": self.budget_skips,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "errors": dict(sorted(self.by_error.items())),
        }


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


def estimate_tokens(text: str) -> int:
    """A generous token estimate (English runs ~4 characters a token)."""
    return len(text) // 3 + 8


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms / retry-after (seconds or an HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RateLimiter:
    """Request starts spaced by 60 / requests_per_minute seconds (None: no limit)."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class LLMClient:
    """One build's connection to the endpoint: limits, retries, account, budget."""

    def __init__(self, settings: LLMSettings, api_key: str | None = None) -> None:
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ValueError(
                f"no API key: set {API_KEY_ENV} (any value for a local server that needs none)"
                " or name a Prefect Secret block"
            )
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError(
                "LLM rewriting needs the openai package: pip install 'mmrs[rewrite]'"
            ) from exc
        self.settings = settings
        self.account = Account()
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=key,
            base_url=settings.base_url,
            max_retries=0,
            timeout=settings.timeout_s,
        )
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._limiter = RateLimiter(settings.requests_per_minute)
        self._lock = threading.Lock()
        self._reserved = 0.0  # worst-case cost of the requests in flight
        self._reserved_tokens = 0
        self._fatal: str | None = None

    def close(self) -> None:
        self._client.close()

    # -- accounting ---------------------------------------------------------------------

    def _cost(self, input_tokens: int, output_tokens: int) -> float:
        s = self.settings
        return (input_tokens * s.price_in + output_tokens * s.price_out) / 1e6

    def _reserve(self, prompt: str) -> tuple[float, int]:
        """Book a request's worst case against the budget, or raise BudgetExhausted."""
        s = self.settings
        tokens = estimate_tokens(prompt) + s.max_tokens
        cost = self._cost(estimate_tokens(prompt), s.max_tokens)
        with self._lock:
            spent = self.account.cost_usd + self._reserved
            used = self.account.input_tokens + self.account.output_tokens + self._reserved_tokens
            over_cost = s.budget_usd is not None and spent + cost > s.budget_usd
            over_tokens = s.budget_tokens is not None and used + tokens > s.budget_tokens
            if over_cost or over_tokens:
                self.account.budget_skips += 1
                raise BudgetExhausted()
            self._reserved += cost
            self._reserved_tokens += tokens
        return cost, tokens

    def _release(self, booked: tuple[float, int], completion: Completion | None) -> None:
        with self._lock:
            self._reserved -= booked[0]
            self._reserved_tokens -= booked[1]
            if completion is not None:
                self.account.input_tokens += completion.input_tokens
                self.account.output_tokens += completion.output_tokens
                self.account.cost_usd += self._cost(
                    completion.input_tokens, completion.output_tokens
                )

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, value in increments.items():
                setattr(self.account, name, getattr(self.account, name) + value)

    def count_cache_hit(self) -> None:
        self._count(cache_hits=1)

    def _failed(self, code: str) -> LLMFailure:
        with self._lock:
            self.account.failures += 1
            self.account.by_error[code] = self.account.by_error.get(code, 0) + 1
        log.warning("LLM request failed: %s", code)
        return LLMFailure(code)

    # -- requests -----------------------------------------------------------------------

    def complete(self, prompt: str) -> Completion:
        """The model's answer to one user message; raises LLMFailure or BudgetExhausted."""
        if self._fatal:
            raise self._failed(self._fatal)
        booked = self._reserve(prompt)
        completion = None
        try:
            completion = self._with_retries(prompt)
            return completion
        finally:
            self._release(booked, completion)

    def _with_retries(self, prompt: str) -> Completion:
        s = self.settings
        for attempt in range(s.max_retries + 1):
            wait, code = self._attempt(prompt, attempt)
            if isinstance(wait, Completion):
                return wait
            if code in FATAL_STATUS.values():
                self._fatal = code  # e.g. a refused key: every other request would fail too
                raise self._failed(code)
            if wait is None or attempt == s.max_retries:
                raise self._failed(code)
            if wait > MAX_RETRY_WAIT_S:
                raise self._failed(f"{code}-retry-after-too-long")
            self._count(retries=1)
            log.info("LLM request: %s, retry %d in %.2f s", code, attempt + 1, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_s * 2**attempt
        return min(base + random.uniform(0, base / 4), MAX_RETRY_WAIT_S)

    def _attempt(self, prompt: str, attempt: int) -> tuple[Completion | float | None, str]:
        """One request: (completion, "") or (seconds to wait before a retry or None, code)."""
        openai = self._openai
        self._limiter.wait()
        with self._slots:
            self._count(requests=1)
            try:
                response = self._client.chat.completions.create(
                    model=self.settings.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=self.settings.temperature,
                    max_tokens=self.settings.max_tokens,
                )
            except openai.APITimeoutError:
                return self._backoff(attempt), "timeout"
            except openai.APIConnectionError:
                return self._backoff(attempt), "connection"
            except openai.APIStatusError as exc:
                status = exc.status_code
                code = f"http-{status}"
                if status == 429:
                    self._count(rate_limited=1)
                if status == 429 or status >= 500:
                    after = _retry_after(exc.response.headers if exc.response else None)
                    return (self._backoff(attempt) if after is None else after), code
                return None, code
            except openai.OpenAIError as exc:  # a body the client cannot read, and the like
                return None, f"client-{type(exc).__name__}"
        try:
            text = response.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            return None, "no-choices"
        usage = getattr(response, "usage", None)
        input_tokens = getattr(usage, "prompt_tokens", None)
        output_tokens = getattr(usage, "completion_tokens", None)
        if input_tokens is None or output_tokens is None:  # a server that reports no usage
            input_tokens, output_tokens = estimate_tokens(prompt), estimate_tokens(text)
        return Completion(text, int(input_tokens), int(output_tokens)), ""
