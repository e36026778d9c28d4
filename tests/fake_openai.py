"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

`FakeOpenAI(reply)` serves POST /v1/chat/completions: each request is answered first from
the `script` queue (status, headers, body, delay), then by `reply(prompt) -> str` (the
assistant's text, answered 200 with usage). The default reply paraphrases the pair after
"INPUT:" in a fact-preserving way. It counts requests and keeps the Authorization headers.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Scripted:
    status: int = 200
    body: str | None = None  # None: a completion of `content` (or of the default reply)
    content: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def input_pair(prompt: str) -> dict[str, str]:
    """The question/answer pair a paraphrase prompt carries (its INPUT: line)."""
    line = next(x for x in prompt.splitlines() if x.startswith("INPUT: "))
    return json.loads(line[len("INPUT: ") :])


def polite(prompt: str) -> str:
    """A paraphrase that changes words only."""
    pair = input_pair(prompt)
    question = pair["question"]
    return json.dumps(
        {"question": f"Looking at this picture: {question}", "answer": pair["answer"]}
    )


def completion(content: str, model: str = "fake") -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


class FakeOpenAI:
    def __init__(self, reply: Callable[[str], str] = polite, latency: float = 0.0) -> None:
        self.reply = reply
        self.latency = latency
        self.script: deque[Scripted] = deque()
        self.requests = 0
        self.prompts: list[str] = []
        self.authorizations: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
            # and the client's delayed ACK add about 40 ms to every answer (real servers
            # such as uvicorn set it too).
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                prompt = request["messages"][-1]["content"]
                with fake._lock:
                    fake.requests += 1
                    fake.prompts.append(prompt)
                    fake.authorizations.add(self.headers.get("authorization", ""))
                    step = fake.script.popleft() if fake.script else Scripted()
                time.sleep(step.delay or fake.latency)
                body = step.body
                if body is None:
                    content = step.content if step.content is not None else fake.reply(prompt)
                    body = json.dumps(completion(content, request.get("model", "fake")))
                data = body.encode()
                try:
                    self.send_response(step.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for name, value in step.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
