"""Persistent answer cache for `m3.llm.client`: one sqlite file, safe for concurrent processes.

Judging is the expensive, repeated part of evaluation and RL reward computation; the cache makes a
re-run of the same (model, prompt, sampling params, template version) free. The key is the sha256 of
canonical JSON of exactly those fields; the endpoint URL and the API key are not part of the key and
are never stored, so a cache file can be shared or published.

Used by `AsyncLLMClient` when `LLMConfig.cache_path` is set. Direct use:

    cache = ResponseCache("judge_cache.sqlite")
    key = cache_key(kind="chat", model="m", messages=[...], temperature=0.0, max_tokens=16,
                    extra=None, template_version="v1")
    cache.put(key, model="m", text="answer", usage={})
    cache.get(key).text, cache.stats
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    usage TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def cache_key(
    *,
    kind: str,
    model: str,
    messages: list[dict],
    temperature: float,
    max_tokens: int,
    extra: dict | None,
    template_version: str,
) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace) of everything that decides the answer.

    `kind` separates plain chat answers from validated JSON answers of the same prompt, so a chat
    answer that is not JSON is never served to `chat_json`.
    """
    payload = {
        "kind": kind,
        "model": model,
        "messages": messages,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "extra": extra or {},
        "template_version": template_version,
    }
    try:
        canonical = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"messages/extra must be plain JSON (str, numbers, lists, dicts) to be cached: {e}"
        ) from e
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    usage: dict
    model: str


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0


class ResponseCache:
    """sqlite-backed key -> answer store. WAL mode lets many processes read while one writes."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        path = os.fspath(path)
        if not path:
            raise ValueError("cache path is empty: pass a file path, or cache_path=None for no cache")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ValueError(
                f"cache directory {parent!r} does not exist: create it or choose another cache_path"
            )
        self.path = path
        self.stats = CacheStats()
        # One connection shared by the event loop thread and any worker threads, serialised by a
        # lock; sqlite's own busy timeout handles the other processes.
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._setup(busy_timeout_s)

    def _setup(self, busy_timeout_s: float) -> None:
        # Switching to WAL needs an exclusive lock and can report "locked" without waiting when
        # several processes open a fresh file at once, so it is retried for a bounded time.
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                with self._lock:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable enough, fast
                    self._conn.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT text, usage, model FROM answers WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                self.stats.misses += 1
                return None
            self.stats.hits += 1
        return CachedAnswer(text=row[0], usage=json.loads(row[1]), model=row[2])

    def put(self, key: str, *, model: str, text: str, usage: dict[str, Any] | None = None) -> None:
        """Store one successful answer (the caller decides what counts as success)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answers (key, model, text, usage, created_at) VALUES (?, ?, ?, ?, ?)",
                (key, model, text, json.dumps(usage or {}, sort_keys=True), time.time()),
            )
            self.stats.writes += 1

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"ResponseCache(path={self.path!r}, stats={self.stats})"
