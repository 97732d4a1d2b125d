"""Tests of m3.llm (client + cache) against a real OpenAI-compatible HTTP server on 127.0.0.1.

Run: PYTHONPATH=. python -m pytest tests/m3/llm -q      (about 5 s; no network beyond localhost)
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3.llm import (
    AsyncLLMClient,
    LLMConfig,
    ResponseCache,
    cache_key,
    gather_bounded,
    parse_json_object,
)
from tests.fakes.openai_server import FakeOpenAIServer, Fault

KEY_ENV = "M3_TEST_LLM_KEY"
KEY = "sk-test-SECRET123"
HI = [{"role": "user", "content": "hi"}]
GOOD = '```json\n{"criteria_met": true, "explanation": "meets it"}\n```'


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def make_client(srv: FakeOpenAIServer, **overrides: object) -> AsyncLLMClient:
    settings: dict = dict(
        model="fake-model",
        base_url=srv.base_url,
        api_key_env=KEY_ENV,
        timeout_s=5.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    settings.update(overrides)
    return AsyncLLMClient(LLMConfig(**settings))


def grader_validate(d: dict) -> dict:
    if not isinstance(d.get("criteria_met"), bool):
        raise ValueError("criteria_met must be true or false")
    return {"criteria_met": d["criteria_met"], "explanation": str(d.get("explanation", ""))}


# ------------------------------------------------------------------ success and cache
def test_chat_success_sends_model_params_and_key() -> None:
    with FakeOpenAIServer() as srv:
        client = make_client(srv, max_tokens=64)
        r = asyncio.run(client.chat(HI, temperature=0.5, extra={"top_p": 0.9}))
    assert (r.text, r.ok, r.cached, r.attempts) == ("echo: hi", True, False, 1)
    assert r.usage["total_tokens"] == 3
    body = srv.requests[0]
    sent = {k: body[k] for k in ("model", "temperature", "max_tokens", "top_p")}
    assert sent == {"model": "fake-model", "temperature": 0.5, "max_tokens": 64, "top_p": 0.9}
    assert srv.auth_headers == [f"Bearer {KEY}"]


def test_cache_hit_makes_no_request_and_temperature_is_part_of_key(tmp_path: Path) -> None:
    with FakeOpenAIServer() as srv:
        client = make_client(srv, cache_path=str(tmp_path / "c.sqlite"))

        async def main() -> list:
            return [await client.chat(HI), await client.chat(HI), await client.chat(HI, temperature=0.7)]

        first, second, warmer = asyncio.run(main())
    assert (first.cached, second.cached, warmer.cached) == (False, True, False)
    assert second.text == first.text and second.attempts == 0
    assert srv.request_count == 2  # the first and the temperature-0.7 call only
    assert (client.cache_stats.hits, client.cache_stats.misses) == (1, 2)


def test_cache_persists_across_client_instances(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sqlite")
    with FakeOpenAIServer() as srv:
        first = asyncio.run(make_client(srv, cache_path=path).chat(HI))
        again = asyncio.run(make_client(srv, cache_path=path).chat(HI))
    assert not first.cached and again.cached and again.text == "echo: hi"
    assert srv.request_count == 1


def test_cache_is_safe_for_concurrent_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    # cache.py is loaded by path: importing the m3.llm package would spend seconds importing openai.
    script = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('llm_cache', sys.argv[3])\n"
        "mod = sys.modules['llm_cache'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "c = mod.ResponseCache(sys.argv[1])\n"
        "for i in range(100): c.put(f'{sys.argv[2]}-{i}', model='m', text='t', usage={})\n"
    )
    cache_py = str(Path(__file__).resolve().parents[3] / "m3" / "llm" / "cache.py")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}", cache_py]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    assert len(ResponseCache(path)) == 400


# ------------------------------------------------------------------ retries
def test_500_then_ok_is_retried() -> None:
    with FakeOpenAIServer(faults=[Fault.http(500)]) as srv:
        r = asyncio.run(make_client(srv).chat(HI))
    assert (r.ok, r.text, r.attempts, srv.request_count) == (True, "echo: hi", 2, 2)


def test_malformed_200_bodies_are_retried() -> None:
    with FakeOpenAIServer(faults=[Fault.garbage(), Fault.garbage('{"object": "error"}')]) as srv:
        r = asyncio.run(make_client(srv).chat(HI))
    assert (r.ok, r.text, r.attempts) == (True, "echo: hi", 3)


def test_429_waits_for_retry_after() -> None:
    # Jitter alone would wait at most backoff_base_s = 1 ms; the 0.3 s gap can only come from Retry-After.
    with FakeOpenAIServer(faults=[Fault.rate_limit(retry_after=0.3)]) as srv:
        r = asyncio.run(make_client(srv, backoff_base_s=0.001, backoff_max_s=2.0).chat(HI))
    assert r.ok and r.attempts == 2
    assert srv.request_times[1] - srv.request_times[0] >= 0.29


def test_timeout_then_ok() -> None:
    with FakeOpenAIServer(faults=[Fault.hang(10)]) as srv:
        start = time.monotonic()
        r = asyncio.run(make_client(srv, timeout_s=0.3).chat(HI))
        elapsed = time.monotonic() - start
    assert (r.ok, r.text, r.attempts) == (True, "echo: hi", 2)
    assert elapsed < 3  # gave up on the hanging request after ~timeout_s, not after the 10 s hang


def test_exhausted_retries_return_an_error_result_and_are_not_cached(tmp_path: Path) -> None:
    with FakeOpenAIServer(faults=[Fault.http(503)] * 4) as srv:
        client = make_client(srv, max_retries=3, cache_path=str(tmp_path / "c.sqlite"))
        r = asyncio.run(client.chat(HI))
        assert srv.request_count == 4
        later = asyncio.run(client.chat(HI))  # the failure was not cached: this one asks the server
    assert not r.ok and r.text == "" and r.attempts == 4
    assert "retries_exhausted" in r.error and "503" in r.error
    assert later.ok and not later.cached and srv.request_count == 5


def test_401_is_not_retried() -> None:
    with FakeOpenAIServer(faults=[Fault.http(401)]) as srv:
        r = asyncio.run(make_client(srv, max_retries=5).chat(HI))
    assert not r.ok and "401" in r.error and r.attempts == 1 and srv.request_count == 1


# ------------------------------------------------------------------ JSON answers
def test_invalid_json_is_reasked_until_valid_then_cached(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda req: GOOD, faults=[Fault.bad_json(), Fault.wrong_key()]) as srv:
        client = make_client(srv, cache_path=str(tmp_path / "c.sqlite"))
        r = asyncio.run(client.chat_json(HI, validate=grader_validate))
        again = asyncio.run(client.chat_json(HI, validate=grader_validate))
    assert r.ok and r.data == {"criteria_met": True, "explanation": "meets it"} and r.attempts == 3
    third = srv.requests[2]["messages"]  # the conversation grew by (bad answer, correction) twice
    assert [m["role"] for m in third] == ["user", "assistant", "user", "assistant", "user"]
    assert "criteria_met" in third[4]["content"]  # the correction names the schema problem
    assert again.cached and again.data == r.data and srv.request_count == 3


def test_always_invalid_json_gives_error_after_json_retries_plus_one(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda req: "I cannot answer in JSON.") as srv:
        client = make_client(srv, json_retries=2, cache_path=str(tmp_path / "c.sqlite"))
        r = asyncio.run(client.chat_json(HI, validate=grader_validate))
        assert srv.request_count == 3
        asyncio.run(client.chat_json(HI, validate=grader_validate))
    assert r.data is None and r.error.startswith("invalid_json") and r.attempts == 3
    assert r.raw_text == "I cannot answer in JSON."
    assert srv.request_count == 6 and len(client.cache) == 0  # nothing cached


def test_parse_json_object_finds_the_first_object() -> None:
    assert parse_json_object('```json\n{"a": {"b": 1}}\n```') == {"a": {"b": 1}}
    assert parse_json_object('Verdict: {"a": 1} and then {"b": 2}') == {"a": 1}
    assert parse_json_object('[1, 2] {broken {"ok": true}') == {"ok": True}
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json_object("[1, 2, 3]")


# ------------------------------------------------------------------ concurrency
def test_concurrency_cap_is_reached_and_never_exceeded() -> None:
    with FakeOpenAIServer(delay_s=0.05) as srv:
        client = make_client(srv, max_concurrency=8)

        async def main() -> list:
            return await asyncio.gather(
                *(client.chat([{"role": "user", "content": f"q{i}"}]) for i in range(40))
            )

        results = asyncio.run(main())
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(40)]
    assert srv.max_in_flight == 8 and srv.request_count == 40


def test_gather_bounded_keeps_order_and_limit() -> None:
    running, peak = 0, 0

    async def job(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (5 - i % 5))
        running -= 1
        return i

    assert asyncio.run(gather_bounded((job(i) for i in range(12)), limit=3)) == list(range(12))
    assert peak == 3


# ------------------------------------------------------------------ the API key
def test_api_key_never_in_cache_logs_or_reprs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # chat_json: a 500 (retried), an invalid answer (re-asked), a valid one; then chat: a 401.
    faults = [Fault.http(500), Fault.bad_json(), None, Fault.http(401)]
    with FakeOpenAIServer(responder=lambda req: GOOD, faults=faults) as srv:
        client = make_client(srv, cache_path=str(tmp_path / "c.sqlite"))

        async def main() -> list:
            return [await client.chat_json(HI, validate=grader_validate), await client.chat(HI)]

        results = asyncio.run(main())
    assert srv.auth_headers[0] == f"Bearer {KEY}"  # the key was really in play
    assert results[0].ok and "401" in results[1].error
    assert "retry" in caplog.text  # our logger was captured
    assert KEY not in caplog.text
    assert all(KEY not in json.dumps(r.__dict__) for r in results)
    for f in tmp_path.iterdir():  # the sqlite file and its -wal/-shm companions
        assert KEY.encode() not in f.read_bytes()
    for text in (repr(client), repr(client.cfg), str(client.cfg), repr(client.cache)):
        assert KEY not in text


def test_missing_key_for_hosted_api_and_bad_settings_are_value_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv("M3_LLM_BASE_URL", raising=False)
    with pytest.raises(ValueError, match=KEY_ENV):
        AsyncLLMClient(LLMConfig(model="m", api_key_env=KEY_ENV))
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        LLMConfig(model="m", api_key_env=KEY)
    assert KEY not in str(err.value)
    for bad in (
        {"max_concurrency": 0},
        {"timeout_s": 0},
        {"backoff_base_s": 2, "backoff_max_s": 1},
        {"model": ""},
    ):
        with pytest.raises(ValueError):
            LLMConfig(**{"model": "m", **bad})


def test_extra_may_not_override_core_fields() -> None:
    with FakeOpenAIServer() as srv:
        with pytest.raises(ValueError, match="max_tokens"):
            asyncio.run(make_client(srv).chat(HI, extra={"max_tokens": 5}))
    assert srv.request_count == 0


def test_base_url_defaults_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M3_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    assert LLMConfig(model="m").base_url == "http://127.0.0.1:9/v1"


def test_cache_key_covers_what_decides_the_answer() -> None:
    base = dict(
        kind="chat", model="m", messages=HI, temperature=0.0, max_tokens=8, extra=None, template_version="v1"
    )
    key = cache_key(**base)
    assert key == cache_key(**{**base, "extra": {}})
    for change in (
        {"model": "m2"},
        {"max_tokens": 9},
        {"extra": {"top_p": 0.5}},
        {"template_version": "v2"},
        {"kind": "json"},
        {"messages": [{"role": "user", "content": "hi!"}]},
    ):
        assert cache_key(**{**base, **change}) != key


def test_fake_server_lists_models() -> None:
    import httpx

    with FakeOpenAIServer(model_ids=["judge-a", "judge-b"]) as srv:
        ids = [m["id"] for m in httpx.get(f"{srv.base_url}/models").json()["data"]]
    assert ids == ["judge-a", "judge-b"]
