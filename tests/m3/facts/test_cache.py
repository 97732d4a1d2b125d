"""Two-level claim cache: normalisation, L1 keyed by verifier version, L2 paraphrase hits with the
exact guard (zero false merges on adversarial near-duplicates), CachedVerifier verifying only
misses, and the Redis L1 against a real redis-server, including the server dying mid-run."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time

import pytest
import redis

from m3.facts.cache import (
    DEFAULT_L2_THRESHOLD,
    CacheConfig,
    CachedVerifier,
    InProcessL1,
    RedisL1,
    SemanticL2,
    TwoLevelCache,
    guard_signature,
    normalize_claim,
)
from m3.facts.types import Verdict
from m3.text.embeddings import cosine, embed

PARAPHRASE = ("Aspirin reduces the risk of heart attack", "Aspirin lowers heart attack risk")

# (stored claim, query that must never get its verdict)
ADVERSARIAL = [
    ("Take 5 mg of warfarin daily", "Take 50 mg of warfarin daily"),
    ("Take 0.5 mg of lorazepam at night", "Take 5 mg of lorazepam at night"),
    ("Metformin is safe in pregnancy", "Metformin is not safe in pregnancy"),
    ("You should take ibuprofen with food", "You should not take ibuprofen with food"),
    ("Continue amoxicillin for 2 weeks", "Continue amoxicillin for 2 days"),
    ("Take paracetamol every 6 hours", "Take paracetamol every 4 hours"),
    ("The maximum dose of paracetamol is 4 g per day", "The maximum dose of paracetamol is 4 mg per day"),
    ("Give 10 mcg of vitamin D daily", "Give 10 mg of vitamin D daily"),
    ("Warfarin increases bleeding risk", "Warfarin decreases bleeding risk"),
    ("Take levothyroxine before breakfast", "Take levothyroxine after breakfast"),
    ("Aspirin can be given to children", "Aspirin can never be given to children"),
    ("Take the tablet with water", "Take the tablet without water"),
    ("Type 1 diabetes requires insulin", "Type 2 diabetes requires insulin"),
    ("Methotrexate for arthritis is taken weekly", "Methotrexate for arthritis is taken daily"),
    ("Nausea is a common side effect of metformin", "Nausea is a rare side effect of metformin"),
    ("Hypoglycemia is a side effect of insulin", "Hyperglycemia is a side effect of insulin"),
    ("Insulin doses above 10 units need a check", "Insulin doses below 10 units need a check"),
    ("Give 1 tablet twice daily", "Give 2 tablets twice daily"),
]


def v(label: str = "Supported", note: str = "") -> Verdict:
    return Verdict(label=label, rationale=note, verifier="fake-v1")


class CountingVerifier:
    """The dependency: labels each claim by a lookup table and counts what it was asked."""

    name = "fake"

    def __init__(self, version: str = "fake-v1|corpus-1", delay_s: float = 0.0) -> None:
        self.version, self.delay_s = version, delay_s
        self.asked: list[str] = []

    async def verify(self, claims: list[str]) -> list[Verdict]:
        self.asked.extend(claims)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return [Verdict(label="Refuted" if "not" in c else "Supported", rationale=c) for c in claims]


def memory_cache(l2: bool = False) -> TwoLevelCache:
    return TwoLevelCache(InProcessL1(), SemanticL2() if l2 else None)


# --- normalisation and signatures --------------------------------------------------------------


def test_normalize_unifies_case_space_punctuation():
    assert normalize_claim("  Aspirin   REDUCES the risk,  of MI!! ") == "aspirin reduces the risk of mi"
    assert normalize_claim("Take 5mg daily.") == normalize_claim("take 5 mg  daily")
    assert normalize_claim("first-line therapy") == normalize_claim("First line therapy")
    assert normalize_claim("Don’t take it") == "don't take it"


@pytest.mark.parametrize(
    "a, b",
    [
        ("Take 5 mg daily", "Take 50 mg daily"),
        ("Take 2.5 mg daily", "Take 25 mg daily"),
        ("Take 5 mg daily", "Take 5 g daily"),
        ("Take 5 mg daily", "Take 5 mcg daily"),
        ("Aspirin is safe", "Aspirin is not safe"),
        ("Take with food", "Take without food"),
        ("Take it", "Never take it"),
        ("There is a risk", "There is no risk"),
        ("Keep potassium < 5 mmol/l", "Keep potassium > 5 mmol/l"),
        ("Give 1,000 mg", "Give 1000 mg"),  # verbatim digits: a normalisation must not invent equality
        ("Give 0.5 mg", "Give .5 mg"),
        ("Temperature of -5 °C", "Temperature of 5 °C"),
    ],
)
def test_normalize_keeps_numbers_units_negations(a, b):
    assert normalize_claim(a) != normalize_claim(b)


def test_normalize_keeps_the_tokens_themselves():
    n = normalize_claim("Do NOT exceed 2.5 mg/kg every 6 hours; never without food, no alcohol.")
    assert n == "do not exceed 2.5 mg / kg every 6 hours never without food no alcohol"


def test_normalize_rejects_non_strings():
    with pytest.raises(ValueError, match="must be str"):
        normalize_claim(5)


def test_guard_signature_equal_for_paraphrases_and_different_for_flips():
    assert guard_signature(PARAPHRASE[0]) == guard_signature(PARAPHRASE[1])  # reduces/lowers: both "down"
    assert guard_signature("Do not take aspirin") == guard_signature("Don't take aspirin")
    assert guard_signature("Take 5mg daily") == guard_signature("Daily, take 5 mg")
    for a, b in ADVERSARIAL:
        assert guard_signature(a) != guard_signature(b), (a, b)


# --- L1 ----------------------------------------------------------------------------------------


def test_l1_hit_after_put_and_keyed_by_verifier_version():
    cache = memory_cache()
    cache.put_many(["Aspirin reduces the risk of heart attack."], [v(note="a")], "verifier-1|corpus-1")
    hit, other = cache.get_many(
        ["aspirin  reduces the risk of HEART attack", "Aspirin is safe"], "verifier-1|corpus-1"
    )
    assert hit.cached == "l1" and hit.rationale == "a" and other is None
    # a new corpus or verifier version is a new key space: the old verdict must not be served
    assert cache.get_many(["Aspirin reduces the risk of heart attack."], "verifier-1|corpus-2") == [None]
    s = cache.stats()
    assert (s["lookups"], s["l1_hits"], s["l2_hits"], s["misses"]) == (3, 1, 0, 2)
    assert s["latency_ms"]["total"]["count"] == 2 and s["latency_ms"]["total"]["p99"] >= 0


def test_l1_returns_copies_and_lru_bound():
    l1 = InProcessL1(max_entries=2)
    cache = TwoLevelCache(l1, None)
    cache.put_many(["a claim", "b claim"], [v(), v()], "v1")
    got = cache.get_many(["a claim"], "v1")[0]  # touching "a" makes "b" the oldest
    got.evidence_ids.append("mutated by caller")
    cache.put_many(["c claim"], [v()], "v1")
    assert len(l1) == 2
    a, b, c = cache.get_many(["a claim", "b claim", "c claim"], "v1")
    assert a is not None and a.evidence_ids == [] and b is None and c is not None


def test_user_errors_raise_value_error_with_the_fix():
    cache = memory_cache()
    with pytest.raises(ValueError, match="list of strings"):
        cache.get_many("one claim", "v1")
    with pytest.raises(ValueError, match="version is empty"):
        cache.get_many(["x"], "")
    with pytest.raises(ValueError, match="one each"):
        cache.put_many(["x", "y"], [v()], "v1")
    with pytest.raises(ValueError, match="l1_backend"):
        CacheConfig(l1_backend="memcached")
    with pytest.raises(ValueError, match="hnsw_m"):
        CacheConfig(hnsw_m=0)
    with pytest.raises(ValueError, match="redis://"):
        RedisL1("localhost:6379")


# --- L2 ----------------------------------------------------------------------------------------


def test_l2_paraphrase_hit_then_promoted_to_l1():
    a, b = PARAPHRASE
    sim = cosine(*embed([a, b]))
    assert sim > DEFAULT_L2_THRESHOLD + 0.02  # measured 0.981 with the bundled MiniLM (default 0.94)
    cache = memory_cache(l2=True)
    cache.put_many([a], [v(note="aspirin fact")], "v1")
    got = cache.get_many([b], "v1")[0]
    assert got is not None and got.cached == "l2" and got.rationale == "aspirin fact"
    assert cache.get_many([b], "v1")[0].cached == "l1"  # the L2 hit was copied into L1
    assert cache.get_many([b], "v2") == [None]  # L2 is per version too
    s = cache.stats()
    assert (s["l1_hits"], s["l2_hits"], s["misses"]) == (1, 1, 1)


def test_l2_threshold_refuses_unrelated_claims():
    cache = TwoLevelCache(None, SemanticL2())
    cache.put_many(["Ibuprofen can cause stomach bleeding"], [v()], "v1")
    # a drug swap scores 0.61 with MiniLM: far below the threshold, no guard involved
    assert cache.get_many(["Naproxen can cause stomach bleeding"], "v1") == [None]
    assert cache.stats()["guard_rejections"] == 0
    # different facts with equal guard signatures that MiniLM puts above 0.92: why the default is 0.94
    stored, query = (
        "Carvedilol is not used to treat heart failure.",
        "Carvedilol is not recommended in patients with heart block.",
    )
    assert guard_signature(stored) == guard_signature(query)
    assert 0.92 < cosine(*embed([stored, query])) < DEFAULT_L2_THRESHOLD
    cache.put_many([stored], [v()], "v1")
    assert cache.get_many([query], "v1") == [None]


def test_l2_guard_rejects_every_adversarial_pair():
    stored = [a for a, _ in ADVERSARIAL]
    queries = [b for _, b in ADVERSARIAL]
    sims = [cosine(*embed([a, b])) for a, b in ADVERSARIAL]
    above = sum(s >= DEFAULT_L2_THRESHOLD for s in sims)
    # the set is adversarial for real: most pairs pass the cosine threshold, only the guard stops them
    assert above >= 12, sorted(zip(sims, queries, strict=True))

    cache = TwoLevelCache(None, SemanticL2())
    cache.put_many(stored, [v(note=a) for a in stored], "v1")
    assert cache.get_many(queries, "v1") == [None] * len(queries)  # zero false merges
    assert cache.stats()["guard_rejections"] >= above
    # and the other direction
    cache2 = TwoLevelCache(None, SemanticL2())
    cache2.put_many(queries, [v(note=b) for b in queries], "v1")
    assert cache2.get_many(stored, "v1") == [None] * len(stored)
    # while the originals themselves (rephrased only in case and spacing) still hit
    assert all(x is not None for x in cache.get_many([s.upper() + " " for s in stored], "v1"))


def test_l2_eviction_keeps_the_newest_entries():
    l2 = SemanticL2(max_entries=4)
    claims = [f"Drug number {i} treats condition {i}" for i in range(6)]
    cache = TwoLevelCache(None, l2)
    for c in claims:
        cache.put_many([c], [v(note=c)], "v1")
    assert l2.size("v1") <= 4
    assert cache.get_many([claims[-1]], "v1")[0].rationale == claims[-1]


# --- CachedVerifier ----------------------------------------------------------------------------


def test_cached_verifier_calls_wrapped_verifier_only_for_misses():
    inner = CountingVerifier()
    cv = CachedVerifier(inner, memory_cache(l2=True))
    assert (cv.name, cv.version) == (inner.name, inner.version)
    first = asyncio.run(
        cv.verify(["Aspirin reduces the risk of heart attack", "Statins lower LDL", "statins lower LDL."])
    )
    assert inner.asked == ["Aspirin reduces the risk of heart attack", "Statins lower LDL"]  # dup sent once
    assert [x.cached for x in first] == ["", "", ""]
    second = asyncio.run(
        cv.verify(["Statins lower LDL", "Aspirin lowers heart attack risk", "Insulin is not oral"])
    )
    assert inner.asked[2:] == ["Insulin is not oral"]
    assert [x.cached for x in second] == ["l1", "l2", ""]
    assert [x.label for x in second] == ["Supported", "Supported", "Refuted"]
    assert (cv.claims_in, cv.claims_verified) == (6, 3)


def test_use_cache_false_verifies_everything_and_leaves_the_cache_alone():
    inner = CountingVerifier()
    cache = memory_cache()
    cv = CachedVerifier(inner, cache)
    asyncio.run(cv.verify(["Statins lower LDL"]))
    out = asyncio.run(cv.verify(["Statins lower LDL", "New claim"], use_cache=False))
    assert inner.asked == ["Statins lower LDL", "Statins lower LDL", "New claim"]
    assert [x.cached for x in out] == ["", ""]
    assert cache.get_many(["New claim"], inner.version) == [None]
    hb = CachedVerifier(inner, cache, use_cache=False)  # HealthBench-Hallu wiring
    asyncio.run(hb.verify(["Statins lower LDL"]))
    assert inner.asked[-1] == "Statins lower LDL" and cache.stats()["lookups"] == 2


def test_concurrent_calls_verify_a_shared_claim_once():
    inner = CountingVerifier(delay_s=0.3)  # long enough that every call joins while the first verifies
    cv = CachedVerifier(inner, memory_cache())

    async def go():
        return await asyncio.gather(*(cv.verify(["Statins lower LDL", f"claim {i}"]) for i in range(4)))

    results = asyncio.run(go())
    assert sorted(inner.asked) == sorted(["Statins lower LDL"] + [f"claim {i}" for i in range(4)])
    assert all(r[0].label == "Supported" for r in results) and cv.joined == 3


def test_wrong_verifier_output_length_is_reported():
    class Broken(CountingVerifier):
        async def verify(self, claims):
            return []

    with pytest.raises(ValueError, match="one Verdict per claim"):
        asyncio.run(CachedVerifier(Broken(), memory_cache()).verify(["x"]))


# --- Redis L1 against a real server --------------------------------------------------------------


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server binary not found on PATH (Debian: apt-get install redis-server)")
        self.binary, self.proc = binary, None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not answer PING on port {self.port}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_redis_l1_roundtrip_json_ttl_and_version(redis_server):
    l1 = RedisL1(redis_server.url, prefix="t:", ttl_s=60)
    cache = TwoLevelCache(l1, None)
    cache.put_many(["Statins lower LDL."], [Verdict("Supported", ["g#1#0"], 0.9, "ok", "fake-v1")], "v1|c1")
    hit, miss = cache.get_many(["statins lower ldl", "Statins raise LDL"], "v1|c1")
    assert (hit.label, hit.evidence_ids, hit.confidence, hit.cached) == ("Supported", ["g#1#0"], 0.9, "l1")
    assert miss is None and cache.get_many(["Statins lower LDL."], "v1|c2") == [None]
    client = redis.Redis.from_url(redis_server.url)
    (key,) = client.keys("t:*")
    assert key.decode().startswith("t:v1%7Cc1:")  # version readable in the key: SCAN per version
    assert json.loads(client.get(key))["claim"] == "statins lower ldl"
    assert 0 < client.ttl(key) <= 60
    client.set(l1.key(("v1|c1", "corrupt")), b"not json")
    assert cache.get_many(["corrupt"], "v1|c1") == [None]  # unreadable value = miss, no crash


def test_redis_down_mid_run_continues_without_l1_and_warns_once(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="m3.facts.cache")
    inner = CountingVerifier()
    l1 = RedisL1(redis_server.url, prefix="t:", timeout_s=0.2, retry_after_s=0.2)
    cv = CachedVerifier(inner, TwoLevelCache(l1, SemanticL2()))
    asyncio.run(cv.verify(["Statins lower LDL", "Aspirin reduces the risk of heart attack"]))
    assert [x.cached for x in asyncio.run(cv.verify(["Statins lower LDL"]))] == ["l1"]

    redis_server.stop()
    for i in range(3):  # several calls, across several cool-downs: still one warning
        out = asyncio.run(cv.verify(["Statins lower LDL", "Aspirin lowers heart attack risk", f"new {i}"]))
        assert [x.cached for x in out] == ["l2", "l2", ""]  # L2 (in process) still answers
        time.sleep(0.25)
    assert inner.asked[-3:] == ["new 0", "new 1", "new 2"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis L1 unavailable at redis://127.0.0.1" in warnings[0].getMessage()
    assert "continuing without L1" in warnings[0].getMessage() and not l1.available

    redis_server.start()  # same port, empty server: after the cool-down L1 works again
    time.sleep(0.25)
    asyncio.run(cv.verify(["after restart"]))
    assert l1.available and cv.cache.get_many(["after restart"], inner.version)[0].cached == "l1"
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
