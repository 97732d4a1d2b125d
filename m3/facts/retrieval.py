"""Evidence retrieval for claim verification: hybrid BM25 + dense search, and a search-agent hook.

    from m3.facts.corpus import load_guideline_corpus
    from m3.facts.retrieval import HybridRetriever, CallableRetriever, MergedRetriever
    retriever = HybridRetriever(load_guideline_corpus())
    retriever.search("CHA2DS2-VASc anticoagulation atrial fibrillation", k=5)   # [(Passage, score), ...]
    retriever.search_many(["claim one", "claim two"], k=5)                     # one list per query

    def web_search(claim: str) -> list[dict]:            # your search agent / API, any source
        return [{"id": url, "text": snippet, "source": url} for url, snippet in my_api(claim)]
    both = MergedRetriever([retriever, CallableRetriever(web_search, version="web-v1")])

Design:
  * BM25 (the maintained `bm25s` library, Lucene variant) over lowercased, stemmed word tokens
    with stopwords removed; alphanumerics stay whole ("cha2ds2", "g3a", "sglt2"), so score names
    match exactly. Dense: MiniLM cosine of the query against every passage (`Corpus.embeddings`),
    an exact matrix-vector product: at 1-5k passages x 384 dims it is under a millisecond, so an
    ANN index would add approximation and a dependency for nothing.
  * Fusion is reciprocal rank fusion, score = sum over rankers of 1 / (rrf_k + rank), rrf_k = 60
    (Cormack et al. 2009), over each ranker's top `candidates`. RRF needs no calibration between
    BM25 scores (unbounded, query-dependent) and cosines, which a weighted sum would. The returned
    score is the fused RRF score (comparable within one query only).
  * `MergedRetriever` fuses any retrievers the same way, so guideline passages and a search
    agent's results interleave by rank; passages with the same id are merged.
  * Every retriever has a `version`; verifiers put it in theirs, so cached verdicts are tied to the
    evidence they were judged on.

Limits: English tokenisation; BM25 and the embedding matrix live in memory (about 1.5 KB a
passage); `HybridRetriever(corpus)` needs `corpus.embeddings()`, encoded once per corpus version
(minutes on CPU for the full guideline set) and then read from the disk cache; `CallableRetriever` calls a synchronous function (verifiers run retrieval in a worker
thread, so a blocking HTTP search is fine; wrap an async search with `asyncio.run`).
"""

from __future__ import annotations

import hashlib
import re
import types
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from m3.facts.corpus import Corpus, passage_from_dict
from m3.facts.types import Passage
from m3.text.lexical import STOPWORDS, stem

Hit = tuple[Passage, float]

_BM25_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def bm25_tokens(text: str) -> list[str]:
    """Lowercase alphanumeric tokens, stopwords removed, crude-stemmed ("antibiotics" = "antibiotic")."""
    return [stem(t) for t in _BM25_TOKEN.findall(text.lower()) if t not in STOPWORDS]


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns evidence for a claim, best first."""

    version: str

    def search(self, query: str, k: int = 5) -> list[Hit]: ...

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]: ...


def _check_k(k: int) -> int:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int (number of passages), got {k!r}")
    return k


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise ValueError("search_many() takes a list of queries; use search() for a single one")
    out = list(queries)
    for i, q in enumerate(out):
        if not isinstance(q, str):
            raise ValueError(f"queries[{i}] is {type(q).__name__}, expected str")
    return out


def rrf_fuse(
    rankings: Sequence[Sequence[Passage]], k: int, rrf_k: int = 60, weights: Sequence[float] | None = None
) -> list[Hit]:
    """Reciprocal rank fusion of several best-first passage lists; ties keep first-seen order."""
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    scores: dict[str, float] = {}
    first: dict[str, Passage] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        for rank, p in enumerate(ranking):
            first.setdefault(p.id, p)
            scores[p.id] = scores.get(p.id, 0.0) + w / (rrf_k + rank + 1)
    order = sorted(scores, key=lambda pid: -scores[pid])  # stable: equal scores keep insertion order
    return [(first[pid], scores[pid]) for pid in order[:k]]


class HybridRetriever:
    """BM25 + dense retrieval over a `Corpus`, fused by reciprocal rank fusion."""

    def __init__(self, corpus: Corpus, *, candidates: int = 50, rrf_k: int = 60, dense: bool = True) -> None:
        if candidates < 1 or rrf_k < 0:
            raise ValueError(
                f"need candidates >= 1 and rrf_k >= 0, got {candidates}, {rrf_k}; defaults 50, 60"
            )
        import bm25s  # imported here: it pulls in scipy, unneeded by callers that never retrieve

        self.corpus = corpus
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.dense = dense
        self._bm25 = bm25s.BM25()
        self._bm25.index([bm25_tokens(Corpus.index_text(p)) for p in corpus.passages], show_progress=False)
        self._vecs = corpus.embeddings() if dense else None
        settings = (candidates, rrf_k, dense)
        # The corpus version alone under the default settings; other settings change rankings, hence verdicts.
        suffix = (
            ""
            if settings == (50, 60, True)
            else "-" + hashlib.sha256(repr(settings).encode()).hexdigest()[:6]
        )
        self.version = corpus.version + suffix

    def __repr__(self) -> str:
        return f"HybridRetriever({len(self.corpus)} passages, version={self.version!r}, dense={self.dense})"

    def _bm25_ranking(self, query: str) -> list[int]:
        tokens = bm25_tokens(query)
        if not tokens:
            return []
        scores = np.asarray(self._bm25.get_scores(tokens))
        n = min(self.candidates, len(scores))
        top = np.argpartition(-scores, n - 1)[:n]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [int(i) for i in top if scores[i] > 0]

    def _dense_rankings(self, queries: list[str]) -> list[list[int]]:
        if self._vecs is None or not queries:
            return [[] for _ in queries]
        from m3.text.embeddings import embed

        sims = embed(queries) @ self._vecs.T  # both unit norm: dot product = cosine
        n = min(self.candidates, sims.shape[1])
        out = []
        for row in sims:
            top = np.argpartition(-row, n - 1)[:n]
            out.append([int(i) for i in top[np.argsort(-row[top], kind="stable")]])
        return out

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        """Top-`k` passages per query; queries are embedded in one batch."""
        _check_k(k)
        queries = _check_queries(queries)
        dense = self._dense_rankings(queries)
        ps = self.corpus.passages
        out = []
        for q, d in zip(queries, dense, strict=True):
            rankings = [[ps[i] for i in self._bm25_ranking(q)], [ps[i] for i in d]]
            out.append(rrf_fuse(rankings, k, self.rrf_k))
        return out


class CallableRetriever:
    """Wraps `fn(claim) -> list[Passage | dict]` (a web search, a search agent, another index).

    Dicts need "id", "text", "source" ("section", "title" optional). The function's order is its
    ranking; scores are 1 / (1 + rank) so they are comparable to nothing but each other."""

    def __init__(self, fn: Callable[[str], Sequence[Passage | dict]], *, version: str | None = None) -> None:
        if not callable(fn):
            raise ValueError(f"CallableRetriever needs a function claim -> passages, got {type(fn).__name__}")
        self.fn = fn
        # Name the backend's version yourself when its results can change (a live search does).
        named = isinstance(fn, types.FunctionType | types.MethodType | types.BuiltinFunctionType)
        self.version = version or f"callable:{(fn if named else type(fn)).__qualname__}"

    def __repr__(self) -> str:
        return f"CallableRetriever({self.version!r})"

    def search(self, query: str, k: int = 5) -> list[Hit]:
        _check_k(k)
        results = self.fn(query)
        if isinstance(results, (str, bytes, dict)) or not isinstance(results, Sequence):
            raise ValueError(
                f"{self.version}: the search function must return a list of passages, got {type(results).__name__}"
            )
        out: list[Hit] = []
        seen: set[str] = set()
        for i, r in enumerate(results):
            if isinstance(r, Passage):
                p = r
            else:
                try:
                    p = passage_from_dict(r)
                except ValueError as exc:
                    raise ValueError(f"{self.version}: result [{i}] for {query[:60]!r}: {exc}") from exc
            if p.id not in seen:
                seen.add(p.id)
                out.append((p, 1.0 / (1 + len(out))))
        return out[:k]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        return [self.search(q, k) for q in _check_queries(queries)]


class MergedRetriever:
    """Several retrievers as one: each returns `per_retriever` hits, fused by reciprocal rank fusion
    (optional `weights`), deduplicated by passage id."""

    def __init__(
        self,
        retrievers: Sequence[Retriever],
        *,
        weights: Sequence[float] | None = None,
        per_retriever: int | None = None,
        rrf_k: int = 60,
    ) -> None:
        retrievers = list(retrievers)
        if not retrievers:
            raise ValueError("MergedRetriever needs at least one retriever")
        for i, r in enumerate(retrievers):
            if not isinstance(r, Retriever):
                raise ValueError(f"retrievers[{i}] ({type(r).__name__}) lacks version/search/search_many")
        if weights is not None and (len(weights) != len(retrievers) or any(w < 0 for w in weights)):
            raise ValueError(f"weights must be {len(retrievers)} non-negative numbers, got {weights!r}")
        self.retrievers = retrievers
        self.weights = list(weights) if weights is not None else None
        self.per_retriever = per_retriever
        self.rrf_k = rrf_k
        self.version = "merged(" + ",".join(r.version for r in retrievers) + ")"

    def __repr__(self) -> str:
        return f"MergedRetriever({self.retrievers!r})"

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[Hit]]:
        _check_k(k)
        queries = _check_queries(queries)
        n = self.per_retriever or k
        per = [r.search_many(queries, n) for r in self.retrievers]
        return [
            rrf_fuse([[p for p, _ in hits[qi]] for hits in per], k, self.rrf_k, self.weights)
            for qi in range(len(queries))
        ]
