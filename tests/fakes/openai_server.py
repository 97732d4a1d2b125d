"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It answers `POST /v1/chat/completions` and `GET /v1/models` over real HTTP (FastAPI + uvicorn in a
background thread, on a free port), so clients are tested through their whole stack: the official
`openai` client, httpx, sockets, timeouts. Handlers are async (`asyncio.sleep` for the delay), so
hundreds of concurrent requests wait together; at about 1 ms of CPU per request it is not the
bottleneck of a judge benchmark (benchmarks/judge_client_throughput.py runs it in its own process).

Usage:

    from tests.fakes.openai_server import Fault, FakeOpenAIServer

    def grader(request: dict) -> str:          # request JSON -> assistant text
        return '{"criteria_met": true, "explanation": "ok"}'

    with FakeOpenAIServer(responder=grader, delay_s=0.0, faults=[Fault.http(500), None]) as srv:
        srv.base_url          # "http://127.0.0.1:<port>/v1"
        ...                   # point a client at it
        srv.request_count, srv.max_in_flight, srv.requests

The same counters are served at GET /fake/stats (POST /fake/reset clears them) for a server that
runs in another process.

Faults are scripted per request, in arrival order: the n-th chat request takes the n-th entry of
`faults` (None = answer normally); once the script is used up every request is answered normally.
`push_faults` appends to the script while the server runs.

Importing: `tests/` must stay a regular package (tests/__init__.py): verl and TransferQueue install
a top-level `tests` package into site-packages that would otherwise shadow it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

Responder = Callable[[dict], str]


def echo_responder(request: dict) -> str:
    """Default responder: echoes the last user message, so distinct prompts get distinct answers."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return f"echo: {message.get('content', '')}"
    return "echo:"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour. Build with the class methods, not the constructor."""

    kind: str  # "hang" | "http" | "garbage" | "content"
    status: int = 200
    retry_after: str | None = None
    hang_s: float = 0.0
    text: str = ""  # assistant text of a "content" fault, response body of a "garbage" one

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Hold the request `seconds` (longer than the client's timeout), then answer normally."""
        return cls(kind="hang", hang_s=seconds)

    @classmethod
    def http(cls, status: int = 500, retry_after: float | str | None = None) -> Fault:
        """Answer with an OpenAI-style error body and `status`; `retry_after` sets the header."""
        return cls(kind="http", status=status, retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def rate_limit(cls, retry_after: float | str | None = 1) -> Fault:
        """HTTP 429 with a Retry-After header (seconds, or an HTTP date as a string)."""
        return cls.http(429, retry_after=retry_after)

    @classmethod
    def garbage(cls, body: str = '{"choices": [') -> Fault:
        """HTTP 200 with a body that is not a chat completion (a broken proxy, a truncated reply)."""
        return cls(kind="garbage", text=body)

    @classmethod
    def content(cls, text: str) -> Fault:
        """A normal 200 completion whose assistant text is `text` instead of the responder's."""
        return cls(kind="content", text=text)

    @classmethod
    def bad_json(cls) -> Fault:
        """An assistant answer that is not JSON at all (for JSON-mode re-ask tests)."""
        return cls.content("Sure! The criteria are met, I think.")

    @classmethod
    def wrong_key(cls) -> Fault:
        """Valid JSON with the wrong keys (a grader expects `criteria_met`)."""
        return cls.content('{"verdict": "yes", "explanation": "wrong key"}')


class FakeOpenAIServer:
    """Context manager running the fake endpoint; counters are safe to read from the test thread."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        delay_s: float = 0.0,
        faults: Iterable[Fault | None] = (),
        model_ids: Iterable[str] = ("fake-model",),
    ) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.responder: Responder = responder or echo_responder
        self.delay_s = delay_s
        self.model_ids = list(model_ids)
        self._faults: collections.deque[Fault | None] = collections.deque(faults)
        self._lock = threading.Lock()
        self.request_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict] = []  # chat request bodies, in arrival order
        self.request_times: list[float] = []  # time.monotonic() at arrival, same order
        self.auth_headers: list[str] = []  # Authorization header of each chat request
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None  # wakes hanging handlers at shutdown
        self.port = 0

    # ----------------------------------------------------------------- scripting and stats
    @property
    def base_url(self) -> str:
        if not self.port:
            raise ValueError("the server is not running: use `with FakeOpenAIServer(...) as srv:`")
        return f"http://127.0.0.1:{self.port}/v1"

    def push_faults(self, *faults: Fault | None) -> None:
        with self._lock:
            self._faults.extend(faults)

    def reset_stats(self) -> None:
        with self._lock:
            self.request_count = 0
            self.max_in_flight = self.in_flight
            self.requests.clear()
            self.request_times.clear()
            self.auth_headers.clear()

    # ----------------------------------------------------------------- the ASGI app
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict:
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.model_ids]
            return {"object": "list", "data": data}

        # Counters over HTTP, for a server running in another process (benchmarks/judge_client_throughput.py).
        @app.get("/fake/stats")
        async def stats() -> dict:
            with self._lock:
                return {"request_count": self.request_count, "max_in_flight": self.max_in_flight}

        @app.post("/fake/reset")
        async def reset() -> dict:
            self.reset_stats()
            return {"ok": True}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            with self._lock:
                self.request_count += 1
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                self.requests.append(body)
                self.request_times.append(time.monotonic())
                self.auth_headers.append(request.headers.get("authorization", ""))
                fault = self._faults.popleft() if self._faults else None
            try:
                return await self._answer(body, fault)
            finally:
                with self._lock:
                    self.in_flight -= 1

        return app

    async def _answer(self, body: dict, fault: Fault | None) -> Response:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault is not None and fault.kind == "hang":
            assert self._stop is not None
            try:  # wait on the stop event so shutdown never waits for a 30 s hang
                await asyncio.wait_for(self._stop.wait(), fault.hang_s)
            except TimeoutError:
                pass
        if fault is not None and fault.kind == "http":
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
            error = {"message": f"fake fault {fault.status}", "type": "fake_error", "code": str(fault.status)}
            return JSONResponse({"error": error}, status_code=fault.status, headers=headers)
        if fault is not None and fault.kind == "garbage":
            return Response(fault.text, media_type="application/json")
        text = fault.text if fault is not None and fault.kind == "content" else self.responder(body)
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_words = len(text.split())
        return JSONResponse(
            {
                "id": f"chatcmpl-fake-{self.request_count}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_words,
                    "completion_tokens": completion_words,
                    "total_tokens": prompt_words + completion_words,
                },
            }
        )

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> FakeOpenAIServer:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when the
        # socket says TCP; with proto 0, Nagle + delayed ACK add ~40 ms to every response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port, no races between test workers
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._build_app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fake-openai", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start within 10 s")
            time.sleep(0.005)
        return self

    def _run(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        asyncio.run(main())

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._loop is not None and self._stop is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # the loop already finished: nothing is hanging any more
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.port = 0


def chat_request_text(request: dict) -> str:
    """All message contents of a chat request, joined: handy inside responders."""
    return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))


def json_answer(**fields: Any) -> str:
    """A responder return value that is a JSON object, e.g. `json_answer(criteria_met=True)`."""
    return json.dumps(fields)
