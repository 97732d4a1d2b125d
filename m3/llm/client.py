"""Async client for any OpenAI-compatible chat endpoint (vLLM, SGLang, `transformers serve`, hosted APIs).

One policy for every judge and evaluator in the repo: bounded concurrency, retries with exponential
backoff and full jitter (honouring Retry-After on 429), JSON answers re-asked when invalid, failures
returned as results (never raised, never dropped), and a persistent sqlite cache (`m3.llm.cache`).

    import asyncio
    from m3.llm import AsyncLLMClient, LLMConfig

    cfg = LLMConfig(model="gpt-4.1", base_url="http://127.0.0.1:8000/v1", cache_path="judge.sqlite")
    async def main():
        async with AsyncLLMClient(cfg) as client:
            r = await client.chat([{"role": "user", "content": "hi"}])   # r.text, r.error, r.cached
            msgs = [{"role": "user", "content": 'Answer as {"criteria_met": true|false}'}]
            j = await client.chat_json(msgs, validate=lambda d: {"criteria_met": bool(d["criteria_met"])})
    asyncio.run(main())

The API key is read from the environment variable NAMED by `LLMConfig.api_key_env` when the client is
built; it is kept out of the config, reprs, logs, error strings and the cache file.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai

from m3.llm.cache import CacheStats, ResponseCache, cache_key

log = logging.getLogger("m3.llm")

T = TypeVar("T")
Messages = list[dict[str, Any]]
Validator = Callable[[dict], dict]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# Statuses worth another try: request timeout, conflict, rate limit; all 5xx are added in code.
_RETRYABLE_4XX = {408, 409, 429}
_CORRECTION = (
    "Your previous answer could not be used: {problem}. Reply again with only one valid JSON object "
    "in the requested format, no other text."
)


def _env_base_url() -> str | None:
    return os.environ.get("M3_LLM_BASE_URL") or None


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """Endpoint settings, independent of the serving backend. Holds no secret (see `api_key_env`)."""

    model: str
    base_url: str | None = field(default_factory=_env_base_url)  # None: the openai client's default
    api_key_env: str = "OPENAI_API_KEY"  # the NAME of the env var, never the key itself
    max_concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 5  # timeouts, connection errors, 408/409/429, 5xx
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    json_retries: int = 3  # re-asks after an invalid JSON answer
    cache_path: str | None = None  # sqlite file; None = no cache
    temperature: float = 0.0
    max_tokens: int = 2048
    template_version: str = "v1"  # bump when prompt templates change, to invalidate cached answers

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("LLMConfig.model is empty: pass the served model name, e.g. model='gpt-4.1'")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"LLMConfig.base_url={self.base_url!r} must start with http:// or https:// "
                "(e.g. 'http://127.0.0.1:8000/v1'), or be None for the openai default"
            )
        if not _ENV_NAME.match(self.api_key_env or ""):
            # Do not echo the value: the usual mistake is pasting the key itself here.
            raise ValueError(
                "LLMConfig.api_key_env must be the NAME of an environment variable (e.g. 'OPENAI_API_KEY'), "
                "not the key: export the key in that variable instead"
            )
        lowest = {  # field: lowest allowed value
            "max_concurrency": 1,
            "max_tokens": 1,
            "max_retries": 0,
            "json_retries": 0,
            "backoff_base_s": 0,
            "backoff_max_s": self.backoff_base_s,
            "temperature": 0,
        }
        for name, low in lowest.items():
            if not getattr(self, name) >= low:
                raise ValueError(f"LLMConfig.{name}={getattr(self, name)!r} must be >= {low}")
        if not self.timeout_s > 0:
            raise ValueError(f"LLMConfig.timeout_s={self.timeout_s!r} must be > 0 (seconds per HTTP attempt)")
        if self.cache_path is not None and not self.cache_path:
            raise ValueError("LLMConfig.cache_path is empty: pass a file path, or None for no cache")
        if not self.template_version:
            raise ValueError("LLMConfig.template_version is empty: use e.g. 'v1'")


@dataclass
class ChatResult:
    text: str
    cached: bool = False
    attempts: int = 0  # HTTP attempts made (0 on a cache hit)
    error: str | None = None  # set when the call failed after all retries; text is then ""
    usage: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class JsonResult:
    data: dict | None
    error: str | None = None
    attempts: int = 0  # answers asked for (1 + re-asks; 0 on a cache hit)
    raw_text: str = ""  # the last answer's text
    cached: bool = False
    usage: dict = field(default_factory=dict)  # summed over all asks

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ClientStats:
    http_requests: int = 0
    retries: int = 0
    failures: int = 0  # chat calls that ended in an error result
    json_reasks: int = 0


class _BadResponse(ValueError):
    """A 200 answer whose body is not a chat completion; retried like a transport error."""


class _Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"


@dataclass
class _LoopState:
    loop: asyncio.AbstractEventLoop
    semaphore: asyncio.Semaphore
    openai: openai.AsyncOpenAI


def parse_json_object(text: str) -> dict:
    """The first JSON object in `text` (```json fences stripped). Raises ValueError when there is none."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                obj, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                return obj
            start = candidate.find("{", start + 1)
    snippet = text[:80].replace("\n", " ")
    raise ValueError(f"no JSON object found in the answer (starts {snippet!r})")


def _parse_retry_after(headers: Any) -> float | None:
    """Seconds from Retry-After-Ms / Retry-After (seconds or an HTTP date); None if absent or bad."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
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


class AsyncLLMClient:
    """Bounded, retrying, caching chat client. Usable from one event loop at a time (any number in turn)."""

    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env)
        if not key:
            if cfg.base_url is None:
                raise ValueError(
                    f"no API key: export {cfg.api_key_env}=... or set base_url/M3_LLM_BASE_URL to a local server"
                )
            key = "EMPTY"  # local servers (vLLM, SGLang) ignore the key, but the openai client needs one
        self._key = _Secret(key)
        self.cache = ResponseCache(cfg.cache_path) if cfg.cache_path else None
        self.stats = ClientStats()
        self._rng = random.Random()
        # The semaphore and the httpx pool belong to one event loop; they are rebuilt when the client
        # is used from a new loop (e.g. a second asyncio.run).
        self._loop_state: _LoopState | None = None

    def __repr__(self) -> str:
        return (
            f"AsyncLLMClient(model={self.cfg.model!r}, base_url={self.cfg.base_url!r}, "
            f"max_concurrency={self.cfg.max_concurrency}, cache_path={self.cfg.cache_path!r})"
        )

    @property
    def cache_stats(self) -> CacheStats | None:
        return self.cache.stats if self.cache is not None else None

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "***") if len(key) >= 6 else text

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loop_state
        if state is None or state.loop is not loop:
            client = openai.AsyncOpenAI(
                api_key=self._key.reveal(),
                base_url=self.cfg.base_url,
                timeout=self.cfg.timeout_s,
                max_retries=0,  # our retry policy (below) is the only one
            )
            state = _LoopState(loop, asyncio.Semaphore(self.cfg.max_concurrency), client)
            self._loop_state = state
        return state

    def _params(self, max_tokens: int | None, temperature: float | None, extra: dict | None) -> dict:
        params = {
            "temperature": self.cfg.temperature if temperature is None else temperature,
            "max_tokens": self.cfg.max_tokens if max_tokens is None else max_tokens,
            "extra": dict(extra or {}),
        }
        if params["max_tokens"] <= 0 or params["temperature"] < 0:
            raise ValueError(f"max_tokens must be > 0 and temperature >= 0, got {params}")
        reserved = sorted(set(params["extra"]) & {"model", "messages", "temperature", "max_tokens", "stream"})
        if reserved:
            raise ValueError(f"extra may not set {reserved}: use the config or the keyword arguments")
        return params

    def _key_for(self, kind: str, messages: Messages, params: dict) -> str | None:
        if self.cache is None:
            return None
        return cache_key(
            kind=kind,
            model=self.cfg.model,
            messages=messages,
            template_version=self.cfg.template_version,
            **params,
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # Honour the server, but never past backoff_max_s (raise it to wait longer).
            return min(retry_after, self.cfg.backoff_max_s)
        return self._rng.uniform(0, min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt))

    async def _complete(self, messages: Messages, params: dict) -> ChatResult:
        """One answer with the retry policy; never raises for endpoint failures."""
        state = self._state()
        body = {
            **params["extra"],
            "model": self.cfg.model,
            "messages": messages,
            "temperature": params["temperature"],
            "max_tokens": params["max_tokens"],
        }
        attempts, last_error = 0, ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            attempts = attempt + 1
            self.stats.http_requests += 1
            try:
                async with state.semaphore:
                    # The client's raw POST, not chat.completions.create: same auth, timeout and
                    # errors, but without the typed request transform and response models, which cost
                    # ~1 ms CPU per call and measurably cut throughput at high concurrency
                    # (benchmarks/judge_client_throughput.py). The body is checked in _to_result.
                    data = await state.openai.post("/chat/completions", body=body, cast_to=dict)
                return self._to_result(data, attempts)
            except openai.APIStatusError as e:
                status = e.status_code
                last_error = self._scrub(f"http_{status}: {e.message}")
                if status < 500 and status not in _RETRYABLE_4XX:
                    self.stats.failures += 1
                    log.info("not retrying (status %s): %s", status, last_error)
                    return ChatResult(text="", attempts=attempts, error=last_error)
                if status == 429:
                    retry_after = _parse_retry_after(e.response.headers)
            except openai.APITimeoutError:
                last_error = f"timeout: no answer within timeout_s={self.cfg.timeout_s}"
            except openai.APIConnectionError as e:
                last_error = self._scrub(f"connection_error: {e}")
            except (json.JSONDecodeError, _BadResponse) as e:  # a 200 whose body is not a completion
                last_error = self._scrub(f"bad_response: {e}")
            if attempt == self.cfg.max_retries:
                break
            delay = self._backoff(attempt, retry_after)
            self.stats.retries += 1
            log.info("retry %d/%d in %.2fs after %s", attempt + 1, self.cfg.max_retries, delay, last_error)
            await asyncio.sleep(delay)  # outside the semaphore: a backing-off call holds no slot
        self.stats.failures += 1
        error = f"retries_exhausted after {attempts} attempts: {last_error}"
        log.warning("%s", error)
        return ChatResult(text="", attempts=attempts, error=error)

    def _to_result(self, data: object, attempts: int) -> ChatResult:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _BadResponse(f"no choices in the response body (got {str(data)[:80]!r})")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise _BadResponse("choices[0] has no message")
        raw_usage = data.get("usage") if isinstance(data, dict) else None
        usage = {k: v for k, v in raw_usage.items() if v is not None} if isinstance(raw_usage, dict) else {}
        content = message.get("content")
        if not isinstance(content, str):
            self.stats.failures += 1
            # Deterministic at temperature 0 (e.g. max_tokens spent on reasoning): not retried.
            finish = choices[0].get("finish_reason")
            return ChatResult(
                text="", attempts=attempts, error=f"empty_response: finish_reason={finish}", usage=usage
            )
        return ChatResult(text=content, attempts=attempts, usage=usage)

    async def chat(
        self,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict | None = None,
    ) -> ChatResult:
        """One assistant answer. `extra` is merged into the request body (e.g. top_p, chat_template_kwargs)."""
        _check_messages(messages)
        params = self._params(max_tokens, temperature, extra)
        key = self._key_for("chat", messages, params)
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                log.debug("cache hit %s", key[:12])
                return ChatResult(text=hit.text, cached=True, attempts=0, usage=hit.usage)
        result = await self._complete(messages, params)
        if result.ok and key is not None and self.cache is not None:
            self.cache.put(key, model=self.cfg.model, text=result.text, usage=result.usage)
        return result

    async def chat_json(
        self,
        messages: Messages,
        validate: Validator | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        extra: dict | None = None,
        parse: Callable[[str], dict] | None = None,
        reask: str = "correct",
    ) -> JsonResult:
        """A JSON-object answer, validated by `validate` (raise ValueError on schema errors).

        Invalid answers are re-asked up to `json_retries` times, then the result carries error
        "invalid_json: ...". reask="correct" appends the bad answer and a correction to the
        conversation; reask="resend" sends the same messages again (simple-evals' grader loop, which
        relies on sampling temperature for a different answer). `parse` turns the answer text into a
        dict (default `parse_json_object`: the first JSON object, fences stripped). Only answers that
        validated are cached.
        """
        if reask not in ("correct", "resend"):
            raise ValueError(f"reask must be 'correct' or 'resend', got {reask!r}")
        _check_messages(messages)
        params = self._params(max_tokens, temperature, extra)
        key = self._key_for("json", messages, params)
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                try:  # re-validated: the cached answer may come from another validator
                    data = _parse_and_validate(hit.text, validate, parse)
                    return JsonResult(data=data, attempts=0, raw_text=hit.text, cached=True, usage=hit.usage)
                except ValueError as e:
                    log.info("cached answer %s rejected by this validator (%s); asking again", key[:12], e)
        conversation = list(messages)
        usage: dict[str, int] = {}
        problem, text = "", ""
        for ask in range(self.cfg.json_retries + 1):
            result = await self._complete(conversation, params)
            for k, v in result.usage.items():
                if isinstance(v, int):
                    usage[k] = usage.get(k, 0) + v
            if not result.ok:
                return JsonResult(
                    data=None, error=result.error, attempts=ask + 1, raw_text=result.text, usage=usage
                )
            text = result.text
            try:
                data = _parse_and_validate(text, validate, parse)
            except ValueError as e:
                problem = str(e)
                if ask < self.cfg.json_retries:
                    self.stats.json_reasks += 1
                    log.info(
                        "invalid JSON answer (ask %d/%d): %s", ask + 1, self.cfg.json_retries + 1, problem
                    )
                if reask == "correct":
                    conversation = conversation + [
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": _CORRECTION.format(problem=problem)},
                    ]
                continue
            if key is not None and self.cache is not None:
                self.cache.put(key, model=self.cfg.model, text=text, usage=result.usage)
            return JsonResult(data=data, attempts=ask + 1, raw_text=text, usage=usage)
        self.stats.failures += 1
        asks = self.cfg.json_retries + 1
        error = f"invalid_json: {problem} (after {asks} answers)"
        log.warning("%s", error)
        return JsonResult(
            data=None,
            error=error,
            attempts=asks,
            raw_text=text,
            usage=usage,
        )

    async def aclose(self) -> None:
        """Close the HTTP pool and the cache; the client is not usable afterwards."""
        state, self._loop_state = self._loop_state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.openai.close()
        if self.cache is not None:
            self.cache.close()

    async def __aenter__(self) -> AsyncLLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _check_messages(messages: Messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"each message needs 'role' and 'content', got {m!r}")


def _parse_and_validate(
    text: str, validate: Validator | None, parse: Callable[[str], dict] | None = None
) -> dict:
    data = (parse or parse_json_object)(text)
    if validate is None:
        return data
    try:
        return validate(data)
    except (KeyError, TypeError) as e:
        # Validators written as plain dict access (d["criteria_met"]) signal schema errors this way.
        raise ValueError(f"schema error: {type(e).__name__}: {e}") from e


async def gather_bounded(coros: Iterable[Awaitable[T]], limit: int) -> list[T]:
    """Await `coros` with at most `limit` running at once; results in input order.

    `AsyncLLMClient` already bounds HTTP calls; this bounds whole per-example pipelines (prompt
    building, several judge calls, scoring) so memory stays flat on large datasets.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return list(await asyncio.gather(*(run(c) for c in coros)))
