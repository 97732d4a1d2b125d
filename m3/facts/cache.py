"""Two-level claim-verdict cache for Fact-Aware RL (docs/formulas.md, Fact-Aware RL item 3).

    from m3.facts.cache import CacheConfig, CachedVerifier, TwoLevelCache
    cache = TwoLevelCache.from_config(CacheConfig(l1_backend="redis"))    # or "memory"
    verifier = CachedVerifier(my_verifier, cache)                           # same name/version
    verdicts = await verifier.verify(claims)                               # .cached: "" | "l1" | "l2"
    await verifier.verify(claims, use_cache=False)                         # HealthBench-Hallu: no cache
    cache.stats()    # l1_hits, l2_hits, misses, guard_rejections, hit_rate, latency_ms percentiles

L1 is an exact cache keyed by (verifier.version, normalize_claim(text)): in-process (LRU dict) or
Redis (JSON values, TTL), shared by every reward worker. A Redis outage never stops training: the
cache warns once and runs without L1, retrying after `redis_retry_s`. L2 is a semantic cache: one
faiss HNSW inner-product index of MiniLM vectors per verifier version; a neighbour is served only
if cosine >= `l2_threshold` (0.94) AND its `guard_signature` (quantities, bare numbers, negation
cues, contrast words) equals the query's. That fixes the paper's flaw of merging "5 mg" with "50 mg";
the contrast words exist because MiniLM scores "increases"/"decreases" at 0.996 and "before"/"after"
at 0.974 cosine. An L2 hit is copied into L1 so the next identical claim is an exact hit.
`CachedVerifier` verifies only misses, once per normalised claim even across concurrent calls.

Limits: the guard is lexical. It never merges differing numbers, units or negations (it may miss
true paraphrases such as "1 g" vs "1000 mg", "avoid" vs "do not take": a verifier call, never a wrong
verdict), but meaning flips outside its contrast lexicon (left/right, swapped roles as in "take X,
not Y" vs "take Y, not X") rely on the cosine threshold alone. HNSW cannot delete: with
`max_entries` set, a full version index is rebuilt from its newest half. L2 lives in process memory
(not shared, lost on restart); only L1 can be shared through Redis. In-flight deduplication works
within one event loop. faiss searches with OpenMP: on the 2-vCPU dev VM two threads made small-batch
searches several times slower than `faiss.omp_set_num_threads(1)` (benchmarks/RESULTS_fact_cache.md);
this module leaves that process-wide setting to the application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol
from urllib.parse import quote

import faiss
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from m3.facts.types import ClaimVerifier, Verdict
from m3.text.embeddings import DIM, embed
from m3.text.lexical import extract_quantities, negation_cues, tokenize

log = logging.getLogger(__name__)

# Not the 0.92 first planned: with the bundled MiniLM, different facts that pass the guard reach
# 0.932 cosine ("Carvedilol is not used to treat heart failure" vs "... must not be used in patients
# with heart block"; omeprazole vs pantoprazole in the same sentence). 0.94 gave zero wrong merges in
# benchmarks/fact_cache_replay.py (threshold sweep in RESULTS_fact_cache.md) and still keeps most
# paraphrases. Re-measure before lowering it or changing the embedding model.
DEFAULT_L2_THRESHOLD = 0.94

# --- normalisation and the L2 guard ------------------------------------------------------------

# Kept tokens: numbers verbatim ("2.5", "1,000", ".5"), words with inner apostrophes ("don't"),
# and symbols that change a claim's meaning ("<5" vs ">5", "mg/kg", "%", "°"). A hyphen survives
# only before a number (ranges, negative values); "first-line" and "first line" become equal.
_NORM_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|\.\d+|[^\W\d_]+(?:'[^\W\d_]+)*|[%/<>=+±°≤≥×~]|-(?=\s*\.?\d)")


@functools.lru_cache(maxsize=65536)  # pure and hot: RL repeats the same claims every step
def normalize_claim(text: str) -> str:
    """Lowercase, unify unicode, quotes, spacing and punctuation; keep numbers, units and negations.
    "Take 5mg, NOT 50 mg!" -> "take 5 mg not 50 mg"."""
    if not isinstance(text, str):
        raise ValueError(f"claims must be str, got {type(text).__name__}; pass the claim text")
    t = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").replace("‘", "'")
    return " ".join(_NORM_TOKEN.findall(t))


# Words whose swap flips a claim while MiniLM barely moves; each maps to the pole it asserts, so
# true paraphrases ("reduces"/"lowers") keep equal signatures.
_POLES = {
    "up": "increase increases increased increasing raise raises raised raising elevate elevates elevated higher more greater above over exceed exceeds exceeding maximum max most",
    "down": "decrease decreases decreased decreasing reduce reduces reduced reducing lower lowers lowered lowering less fewer below under minimum min least lessen lessens drop drops",
    "before": "before prior",
    "after": "after following",
    "common": "common commonly often frequent frequently",
    "rare": "rare rarely uncommon infrequent infrequently",
    "acute": "acute",
    "chronic": "chronic",
    "child": "child children pediatric paediatric kids",
    "adult": "adult adults",
    "infant": "infant infants newborn newborns neonate neonates baby babies",
    "older": "elderly older",
    "pregnancy": "pregnant pregnancy",
    "lactation": "breastfeeding lactation lactating",
    "oral": "oral orally",
    "iv": "iv intravenous intravenously",
    "im": "intramuscular intramuscularly",
    "sc": "subcutaneous subcutaneously",
    "topical": "topical topically",
    "daily": "daily",
    "weekly": "weekly",
    "monthly": "monthly",
    "nightly": "nightly",
    "unsafe": "unsafe",
    "unlikely": "unlikely",
    "inappropriate": "inappropriate",
}
_POLE_OF = {w: pole for pole, words in _POLES.items() for w in words.split()}
_WORD_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "hundred": 100, "thousand": 1000, "half": 0.5, "first": "1st", "second": "2nd", "third": "3rd"}  # fmt: skip


class GuardSignature(NamedTuple):
    quantities: tuple[tuple[str, float], ...]  # sorted (unit, value) from m3.text.lexical.extract_quantities
    numbers: tuple[str, ...]  # every number, with or without a unit ("type 2", "stage 3")
    negations: tuple[str, ...]  # sorted cues; "don't", "cannot", "isn't" all count as "not"
    contrasts: tuple[str, ...]  # sorted poles of contrast words (up/down, before/after, ...)


def _number(tok: str) -> str:
    if tok in _WORD_NUMBERS:
        return str(_WORD_NUMBERS[tok])
    try:
        return repr(float(tok.replace(",", "")))
    except ValueError:  # "1.2.3": compare verbatim
        return tok


@functools.lru_cache(maxsize=65536)
def guard_signature(text: str) -> GuardSignature:
    """What must be identical for two claims to share a verdict through L2."""
    toks = tokenize(text)
    quantities = tuple(sorted((q.unit, round(q.value, 9)) for q in extract_quantities(text)))
    numbers = tuple(sorted(_number(t) for t in toks if t[0].isdigit() or t in _WORD_NUMBERS))
    negs = []
    for cue in negation_cues(text):
        c = cue.replace("'", "")
        negs.append("not" if c == "cannot" or c.endswith("nt") else c)
    poles = []
    for t in toks:
        if t.startswith(("hypo", "hyper")) and len(t) > 6:  # hypoglycaemia vs hyperglycaemia
            poles.append(t[:5] if t.startswith("hyper") else t[:4])
        elif t in _POLE_OF:
            poles.append(_POLE_OF[t])
    return GuardSignature(quantities, numbers, tuple(sorted(negs)), tuple(sorted(poles)))


# --- config and stats --------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheConfig:
    """Cache knobs. `max_entries` bounds the memory L1 and each L2 version index (0 = unbounded);
    `ttl_s` expires Redis L1 entries (0 = never); `ef_search` trades L2 recall for latency."""

    l1_backend: str = "memory"  # "memory" | "redis"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "m3:claim:"
    redis_timeout_s: float = 0.5
    redis_retry_s: float = 30.0
    ttl_s: int = 7 * 24 * 3600
    l2_enabled: bool = True
    l2_threshold: float = DEFAULT_L2_THRESHOLD
    hnsw_m: int = 32
    ef_search: int = 64
    max_entries: int = 0

    def __post_init__(self) -> None:
        if self.l1_backend not in ("memory", "redis"):
            raise ValueError(f"l1_backend must be 'memory' or 'redis', got {self.l1_backend!r}")
        if not -1.0 <= self.l2_threshold <= 1.0:
            raise ValueError(
                f"l2_threshold is a cosine in [-1, 1], got {self.l2_threshold}; default {DEFAULT_L2_THRESHOLD}"
            )
        bad = [
            f"{n}={getattr(self, n)}"
            for n in ("hnsw_m", "ef_search", "redis_timeout_s")
            if getattr(self, n) <= 0
        ]
        bad += [
            f"{n}={getattr(self, n)}"
            for n in ("ttl_s", "max_entries", "redis_retry_s")
            if getattr(self, n) < 0
        ]
        if bad:
            raise ValueError(f"invalid {', '.join(bad)}: hnsw_m, ef_search, redis_timeout_s must be > 0; "
                             "ttl_s, max_entries, redis_retry_s >= 0 (0 disables them)")  # fmt: skip


class LatencyHistogram:
    """Per-call latencies: cumulative log-spaced bucket counts plus the last 8192 samples for
    percentiles (so percentiles follow the current regime, not the first warm-up calls)."""

    BOUNDS_MS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, float("inf"))

    def __init__(self) -> None:
        self.counts = [0] * len(self.BOUNDS_MS)
        self.recent: deque[float] = deque(maxlen=8192)

    def add(self, ms: float) -> None:
        self.counts[next(i for i, b in enumerate(self.BOUNDS_MS) if ms <= b)] += 1
        self.recent.append(ms)

    def summary(self) -> dict:
        if not self.recent:
            return {"count": 0}
        p50, p90, p99 = np.percentile(np.fromiter(self.recent, float), [50, 90, 99])
        return {"count": sum(self.counts), "p50": p50, "p90": p90, "p99": p99,
                "histogram": dict(zip(map(str, self.BOUNDS_MS), self.counts, strict=True))}  # fmt: skip


def _copy(v: Verdict, cached: str) -> Verdict:
    # callers may mutate what they get; the cache must never share its evidence list with them
    return dataclasses.replace(v, cached=cached, evidence_ids=list(v.evidence_ids))


# --- L1: exact ---------------------------------------------------------------------------------

Key = tuple[str, str]  # (verifier version, normalised claim)


class L1Backend(Protocol):
    def get_many(self, keys: list[Key]) -> list[Verdict | None]: ...
    def put_many(self, items: list[tuple[Key, Verdict]]) -> None: ...


class InProcessL1:
    """A dict in this process (no TTL: it dies with the process), LRU-bounded when max_entries > 0."""

    def __init__(self, max_entries: int = 0) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0 (0 = unbounded), got {max_entries}")
        self.max_entries = max_entries
        self._d: OrderedDict[Key, Verdict] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get_many(self, keys: list[Key]) -> list[Verdict | None]:
        with self._lock:
            out = [self._d.get(k) for k in keys]
            for k, v in zip(keys, out, strict=True):
                if v is not None and self.max_entries:
                    self._d.move_to_end(k)
        return out

    def put_many(self, items: list[tuple[Key, Verdict]]) -> None:
        with self._lock:
            for k, v in items:
                self._d[k] = _copy(v, "")
                self._d.move_to_end(k)
            while self.max_entries and len(self._d) > self.max_entries:
                self._d.popitem(last=False)


class RedisL1:
    """Exact cache in Redis: key = prefix + url-quoted version + ":" + sha1(normalised claim), value =
    JSON of the Verdict plus the claim. Connection errors and timeouts never raise: the first one of
    an outage logs a warning, then L1 answers "miss" (and drops writes) without touching the network
    until `retry_after_s` has passed; retries that fail stay silent, a success logs "is back"."""

    def __init__(self, url: str, prefix: str = "m3:claim:", ttl_s: int = 7 * 24 * 3600,
                 timeout_s: float = 0.5, retry_after_s: float = 30.0) -> None:  # fmt: skip
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis url must start with redis://, rediss:// or unix://, got {url!r}")
        self.url = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", url)  # never log a password
        self.prefix, self.ttl_s, self.retry_after_s = prefix, ttl_s, retry_after_s
        # no client-side retries: an outage should cost one fast failure, then the cool-down
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
        )
        self.failures = 0
        self._down_until = 0.0
        self._warned = False
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return not self._warned

    def key(self, k: Key) -> str:
        return f"{self.prefix}{quote(k[0], safe='')}:{hashlib.sha1(k[1].encode()).hexdigest()}"

    def _guarded(self, op: Callable[[], object], default: object) -> object:
        if time.monotonic() < self._down_until:
            return default
        try:
            out = op()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            with self._lock:
                self.failures += 1
                self._down_until = time.monotonic() + self.retry_after_s
                first, self._warned = not self._warned, True
            if first:
                log.warning("Redis L1 unavailable at %s (%s: %s); continuing without L1, retrying "
                            "every %g s", self.url, type(exc).__name__, exc, self.retry_after_s)  # fmt: skip
            return default
        if self._warned:
            with self._lock:
                back, self._warned = self._warned, False
            if back:
                log.info("Redis L1 at %s is back", self.url)
        return out

    def get_many(self, keys: list[Key]) -> list[Verdict | None]:
        if not keys:
            return []
        raw = self._guarded(lambda: self.client.mget([self.key(k) for k in keys]), [None] * len(keys))
        out: list[Verdict | None] = []
        for k, value in zip(keys, raw, strict=True):
            verdict = None
            if value is not None:
                try:
                    d = json.loads(value)
                    verdict = Verdict(**{f.name: d[f.name] for f in dataclasses.fields(Verdict)})
                except (ValueError, KeyError, TypeError) as exc:  # foreign or corrupt value: a miss
                    log.debug("ignoring unreadable L1 value for %r: %s", k[1], exc)
            out.append(verdict)
        return out

    def put_many(self, items: list[tuple[Key, Verdict]]) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            for k, v in items:
                value = json.dumps({**dataclasses.asdict(v), "cached": "", "claim": k[1]})
                pipe.set(self.key(k), value, ex=self.ttl_s or None)
            pipe.execute()

        if items:
            self._guarded(write, None)


# --- L2: semantic ------------------------------------------------------------------------------


class L2Match(NamedTuple):
    verdict: Verdict
    claim: str  # the stored claim whose verdict is served
    score: float  # cosine


@dataclass
class _Shard:  # one verifier version
    index: faiss.IndexHNSWFlat
    claims: list[str]
    sigs: list[GuardSignature]
    verdicts: list[Verdict]
    by_norm: dict[str, int]


class SemanticL2:
    """Per-version faiss HNSW (inner product on unit vectors = cosine) with the exact guard."""

    def __init__(self, threshold: float = DEFAULT_L2_THRESHOLD, hnsw_m: int = 32, ef_search: int = 64,
                 max_entries: int = 0, dim: int = DIM, k: int = 8) -> None:  # fmt: skip
        self.threshold, self.hnsw_m, self.ef_search = threshold, hnsw_m, ef_search
        self.max_entries, self.dim, self.k = max_entries, dim, k
        self._shards: dict[str, _Shard] = {}
        self._lock = threading.Lock()  # faiss HNSW must not be searched while it is being added to

    def size(self, version: str) -> int:
        shard = self._shards.get(version)
        return 0 if shard is None else len(shard.claims)

    def _new_shard(self) -> _Shard:
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = self.ef_search
        return _Shard(index, [], [], [], {})

    def _vectors(self, vecs: np.ndarray, n: int) -> np.ndarray:
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        if vecs.shape != (n, self.dim):
            raise ValueError(f"expected {n} embeddings of dim {self.dim}, got shape {vecs.shape}")
        return vecs

    def lookup(self, version: str, vecs: np.ndarray, sigs: Sequence[GuardSignature],
               norms: Sequence[str] | None = None) -> tuple[list[L2Match | None], int]:  # fmt: skip
        """Best neighbour per query with cosine >= threshold and an equal signature; also returns how
        many queries had a neighbour above the threshold that the guard alone refused."""
        n = len(sigs)
        out: list[L2Match | None] = [None] * n
        with self._lock:
            shard = self._shards.get(version)
            if shard is None or not shard.claims or n == 0:
                return out, 0
            vecs, todo = self._vectors(vecs, n), []
            for i in range(n):
                exact = shard.by_norm.get(norms[i]) if norms is not None else None
                if exact is not None and shard.sigs[exact] == sigs[i]:  # same text: no ANN needed
                    out[i] = L2Match(shard.verdicts[exact], shard.claims[exact], 1.0)
                else:
                    todo.append(i)
            if not todo:
                return out, 0
            scores, ids = shard.index.search(vecs[todo], min(self.k, len(shard.claims)))
            rejected = 0
            for i, row_s, row_j in zip(todo, scores.tolist(), ids.tolist(), strict=True):  # lists: fast
                near = [
                    (sc, j) for sc, j in zip(row_s, row_j, strict=True) if j >= 0 and sc >= self.threshold
                ]
                match = next(((sc, j) for sc, j in near if shard.sigs[j] == sigs[i]), None)
                if match is not None:
                    out[i] = L2Match(shard.verdicts[match[1]], shard.claims[match[1]], match[0])
                elif near:
                    rejected += 1
        return out, rejected

    def add(self, version: str, claims: Sequence[str], vecs: np.ndarray, verdicts: Sequence[Verdict],
            norms: Sequence[str] | None = None) -> None:  # fmt: skip
        vecs = self._vectors(vecs, len(claims))
        norms = [normalize_claim(c) for c in claims] if norms is None else list(norms)
        with self._lock:
            shard = self._shards.setdefault(version, self._new_shard())
            keep, seen = [], set()
            for i, nm in enumerate(norms):
                if nm not in shard.by_norm and nm not in seen:
                    seen.add(nm)
                    keep.append(i)
            if self.max_entries and len(shard.claims) + len(keep) > self.max_entries:
                shard = self._shards[version] = self._evict(shard, max(self.max_entries // 2 - len(keep), 0))
            for i in keep:
                shard.by_norm[norms[i]] = len(shard.claims)
                shard.claims.append(claims[i])
                shard.sigs.append(guard_signature(claims[i]))
                shard.verdicts.append(_copy(verdicts[i], ""))
            if keep:
                shard.index.add(vecs[keep])

    def _evict(self, old: _Shard, keep_n: int) -> _Shard:
        """HNSW cannot delete: rebuild from the newest `keep_n` entries."""
        start = len(old.claims) - keep_n
        new = self._new_shard()
        if keep_n:
            new.index.add(old.index.reconstruct_n(start, keep_n))
        new.claims, new.sigs, new.verdicts = old.claims[start:], old.sigs[start:], old.verdicts[start:]
        new.by_norm = {normalize_claim(c): i for i, c in enumerate(new.claims)}
        return new


# --- the two levels together ---------------------------------------------------------------------


class TwoLevelCache:
    """L1 exact first, then L2 semantic for L1 misses (one batched embed call); either may be None."""

    def __init__(self, l1: L1Backend | None, l2: SemanticL2 | None, cfg: CacheConfig | None = None,
                 embedder: Callable[[list[str]], np.ndarray] = embed) -> None:  # fmt: skip
        self.l1, self.l2, self.cfg, self.embedder = l1, l2, cfg or CacheConfig(), embedder
        self._lock = threading.Lock()
        self.reset_stats()

    @classmethod
    def from_config(cls, cfg: CacheConfig) -> TwoLevelCache:
        l1: L1Backend = (
            RedisL1(cfg.redis_url, cfg.redis_prefix, cfg.ttl_s, cfg.redis_timeout_s, cfg.redis_retry_s)
            if cfg.l1_backend == "redis"
            else InProcessL1(cfg.max_entries)
        )
        l2 = (
            SemanticL2(cfg.l2_threshold, cfg.hnsw_m, cfg.ef_search, cfg.max_entries)
            if cfg.l2_enabled
            else None
        )
        return cls(l1, l2, cfg)

    def reset_stats(self) -> None:
        with self._lock:
            self.counts = dict(lookups=0, l1_hits=0, l2_hits=0, misses=0, guard_rejections=0)
            self.latency = {stage: LatencyHistogram() for stage in ("l1", "l2", "total")}

    def stats(self) -> dict:
        with self._lock:
            n = self.counts["lookups"]
            hits = self.counts["l1_hits"] + self.counts["l2_hits"]
            return {**self.counts, "hit_rate": hits / n if n else 0.0,
                    "latency_ms": {k: h.summary() for k, h in self.latency.items()}}  # fmt: skip

    @staticmethod
    def _check(claims: Sequence[str], version: str) -> list[str]:
        if isinstance(claims, str):
            raise ValueError("claims must be a list of strings; wrap a single claim as [claim]")
        if not isinstance(version, str) or not version:
            raise ValueError("version is empty: pass verifier.version (verifier + corpus version)")
        return list(claims)

    def get_many(self, claims: Sequence[str], version: str) -> list[Verdict | None]:
        """A verdict copy per claim (`cached` = "l1" or "l2") or None on a miss."""
        claims = self._check(claims, version)
        t0 = time.perf_counter()
        norms = [normalize_claim(c) for c in claims]
        out: list[Verdict | None] = [None] * len(claims)
        if self.l1 is not None:
            for i, v in enumerate(self.l1.get_many([(version, nm) for nm in norms])):
                out[i] = None if v is None else _copy(v, "l1")
        t1 = time.perf_counter()
        l1_hits, l2_hits, rejected = sum(v is not None for v in out), 0, 0
        todo = [i for i, v in enumerate(out) if v is None]
        if self.l2 is not None and todo and self.l2.size(version):
            texts = [claims[i] for i in todo]
            matches, rejected = self.l2.lookup(
                version, self.embedder(texts), [guard_signature(t) for t in texts], [norms[i] for i in todo]
            )
            promote = []
            for i, m in zip(todo, matches, strict=True):
                if m is not None:
                    out[i] = _copy(m.verdict, "l2")
                    promote.append(((version, norms[i]), m.verdict))
                    l2_hits += 1
            if promote and self.l1 is not None:
                self.l1.put_many(promote)
        t2 = time.perf_counter()
        with self._lock:
            c = self.counts
            c["lookups"] += len(claims)
            c["l1_hits"] += l1_hits
            c["l2_hits"] += l2_hits
            c["misses"] += len(claims) - l1_hits - l2_hits
            c["guard_rejections"] += rejected
            if claims:
                self.latency["l1"].add((t1 - t0) * 1e3)
                self.latency["total"].add((t2 - t0) * 1e3)
                if self.l2 is not None and todo:
                    self.latency["l2"].add((t2 - t1) * 1e3)
        return out

    def put_many(self, claims: Sequence[str], verdicts: Sequence[Verdict], version: str) -> None:
        """Store fresh verdicts in both levels (L2 skips claims whose normalised text it has)."""
        claims = self._check(claims, version)
        if len(verdicts) != len(claims):
            raise ValueError(f"put_many got {len(claims)} claims but {len(verdicts)} verdicts; pass one each")
        norms = [normalize_claim(c) for c in claims]
        if self.l1 is not None:
            self.l1.put_many([((version, nm), v) for nm, v in zip(norms, verdicts, strict=True)])
        if self.l2 is not None and claims:
            self.l2.add(version, claims, self.embedder(claims), verdicts, norms)


class CachedVerifier:
    """A ClaimVerifier that answers from `cache` and sends only misses to `verifier`.

    Claims with the same normalised text are verified once per call, and once across concurrent
    calls on one event loop (a later call awaits the earlier call's result)."""

    def __init__(self, verifier: ClaimVerifier, cache: TwoLevelCache, use_cache: bool = True) -> None:
        self.verifier, self.cache, self.use_cache = verifier, cache, use_cache
        self.claims_in = 0  # claims asked for
        self.claims_verified = 0  # claims sent to the wrapped verifier
        self.joined = 0  # misses answered by another call's in-flight verification
        self._inflight: dict[Key, asyncio.Future] = {}

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def version(self) -> str:
        return self.verifier.version

    async def _verify(self, texts: list[str]) -> list[Verdict]:
        self.claims_verified += len(texts)
        out = list(await self.verifier.verify(texts))
        if len(out) != len(texts) or not all(isinstance(v, Verdict) for v in out):
            raise ValueError(f"verifier {self.verifier.name!r} returned {len(out)} results for "
                             f"{len(texts)} claims; verify() must return one Verdict per claim, in order")  # fmt: skip
        return out

    async def verify(self, claims: list[str], *, use_cache: bool | None = None) -> list[Verdict]:
        claims = TwoLevelCache._check(claims, self.verifier.version)
        self.claims_in += len(claims)
        if not (self.use_cache if use_cache is None else use_cache) or not claims:
            return await self._verify(claims) if claims else []
        version = self.verifier.version
        found = await asyncio.to_thread(self.cache.get_many, claims, version)  # L2 embeds: off the loop
        norms = [normalize_claim(c) for c in claims]
        loop = asyncio.get_running_loop()
        mine: dict[str, str] = {}  # norm -> text this call verifies
        theirs: dict[str, asyncio.Future] = {}  # norm -> another call's pending verdict
        for c, nm, v in zip(claims, norms, found, strict=True):
            if v is not None or nm in mine or nm in theirs:
                continue
            fut = self._inflight.get((version, nm))
            if fut is not None and fut.get_loop() is loop:
                theirs[nm] = fut
            else:
                mine[nm] = c
                self._inflight[(version, nm)] = loop.create_future()
        fresh: dict[str, Verdict] = {}
        if mine:
            futs = {nm: self._inflight[(version, nm)] for nm in mine}
            try:
                verdicts = await self._verify(list(mine.values()))
                await asyncio.to_thread(self.cache.put_many, list(mine.values()), verdicts, version)
            except BaseException:  # incl. cancellation: waiters must not hang, they verify themselves
                for fut in futs.values():
                    fut.cancel()
                raise
            finally:
                for nm in mine:
                    self._inflight.pop((version, nm), None)
            fresh = dict(zip(mine, verdicts, strict=True))
            for nm, fut in futs.items():
                fut.set_result(fresh[nm])
        retry = []
        for nm, fut in theirs.items():
            try:
                fresh[nm] = await asyncio.shield(fut)
                self.joined += 1
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # we are cancelled, not the other call
                    raise
                retry.append(nm)
        if retry:
            texts = [claims[norms.index(nm)] for nm in retry]
            verdicts = await self._verify(texts)
            await asyncio.to_thread(self.cache.put_many, texts, verdicts, version)
            fresh.update(zip(retry, verdicts, strict=True))
        return [v if v is not None else _copy(fresh[nm], "") for v, nm in zip(found, norms, strict=True)]
