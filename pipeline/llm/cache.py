"""LLM answers stored by content: (model, prompt version, prompt text) -> the model's text.

One JSON file per answer under <store>/llm/<2 hex>/<sha256>.json, written atomically, so
concurrent builds share the store safely and a re-run asks nothing it asked before. The
endpoint's address is not part of the key: the same model answers the same way wherever it
is served. Failed requests are never stored (a re-run asks them again).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from ..store import atomic_file
from .client import Completion


def answer_key(model: str, prompt_version: str, prompt: str) -> str:
    """The content address of one question to one model with one prompt version."""
    payload = json.dumps([model, prompt_version, prompt], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class AnswerCache:
    """A folder of answers; `ask` each key at most once per process, however many threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Lock] = {}

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            return json.loads(self.path(key).read_text())["output"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or cut short by a crash: ask again

    def put(self, key: str, model: str, prompt_version: str, completion: Completion) -> None:
        record = {
            "model": model,
            "prompt_version": prompt_version,
            "output": completion.text,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
        }
        with atomic_file(self.path(key), "w") as handle:
            handle.write(json.dumps(record, ensure_ascii=False))

    def get_or_ask(
        self, key: str, model: str, prompt_version: str, ask: Callable[[], Completion]
    ) -> tuple[str, bool]:
        """(the answer, whether it came from the store); `ask` may raise (nothing stored)."""
        found = self.get(key)
        if found is not None:
            return found, True
        with self._lock:
            lock = self._inflight.setdefault(key, threading.Lock())
        try:
            with lock:  # a second thread with the same question waits for the first's answer
                found = self.get(key)
                if found is not None:
                    return found, True
                completion = ask()
                self.put(key, model, prompt_version, completion)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
        return completion.text, False
