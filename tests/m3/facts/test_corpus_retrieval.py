"""Guideline corpus (chunking, ids, version, disk cache) and hybrid / pluggable retrieval.

Run: .venv/bin/python -m pytest tests/m3/facts/test_corpus_retrieval.py -q -s   (15-30 s: MiniLM
encodes a 10-guideline subset once; the embedding cache under the session's basetemp is shared
with test_verify.py, so the second module reads it from disk)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import m3.text.embeddings
from m3.facts.corpus import (
    HEADING_MARK,
    ChunkConfig,
    Corpus,
    chunk_markdown,
    guideline_registry,
    load_guideline_corpus,
    load_passages_jsonl,
)
from m3.facts.retrieval import CallableRetriever, HybridRetriever, MergedRetriever, Retriever
from m3.facts.types import Passage

SUBSET = [  # the guidelines test_verify.py's claims come from, plus related distractors
    "acc_aha_af_2023", "kdigo_ckd_2024", "wells_pe_2000", "bts_cap_2009", "gold_copd_2024", "sepsis3_2016",
    "ash_vte_2020", "timi_ua_nstemi_2000", "aha_asa_stroke_2019", "acc_aha_ascvd_2013",
]  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "m3-corpus-cache"  # same path in test_verify.py


@pytest.fixture(scope="module")
def full() -> Corpus:
    return load_guideline_corpus()


@pytest.fixture(scope="module")
def hybrid(cache_dir) -> HybridRetriever:
    return HybridRetriever(load_guideline_corpus(SUBSET, cache_dir=cache_dir))


# --- corpus ----------------------------------------------------------------------------------


def test_corpus_covers_all_43_guidelines_with_stable_unique_ids(full):
    registry = guideline_registry()
    assert len(registry) == 43
    assert {p.source for p in full.passages} == {g["id"] for g in registry}
    ids = [p.id for p in full.passages]
    assert len(ids) == len(set(ids))
    by_section: dict[tuple[str, str], list[int]] = {}
    for p in full.passages:
        source, section, n = p.id.split("#")
        assert (source, section) == (p.source, p.section) and p.title
        by_section.setdefault((source, section), []).append(int(n))
    assert all(ns == list(range(len(ns))) for ns in by_section.values())  # 0..n-1, file order
    sections = {(g["id"], s) for g in registry for s in g["sections"]}
    assert set(by_section) == sections
    again = load_guideline_corpus()
    assert re.fullmatch(r"[0-9a-f]{12}", full.version) and again.version == full.version
    assert [p.id for p in again.passages] == ids


def test_chunk_sizes_and_no_tool_adverts(full):
    words = [len(p.text.split()) for p in full.passages]
    share_in_range = sum(30 <= w <= 190 for w in words) / len(words)
    assert share_in_range > 0.97, Counter(w // 50 * 50 for w in words)
    assert 0.6 < sum(60 <= w <= 160 for w in words) / len(words)
    assert not any("OpenMedicine" in p.text or "available via MCP" in p.text for p in full.passages)
    assert all(p.text.startswith(HEADING_MARK) for p in full.passages)  # every chunk has its context


def test_version_changes_with_any_passage_text(full):
    first = full.passages[0]
    edited = Passage(first.id, first.text + " Extra.", first.source, first.section, first.title)
    assert Corpus([edited, *full.passages[1:]]).version != full.version


MD = """# Section Title — ORG 2024

## Dosing

**Men:**
- Score ≥ 2: Drug X is recommended (Class I).

- **Apixaban:** Standard dose is 5 mg BID.
  - *Dose Reduction:* Reduce to 2.5 mg BID if two criteria are met.
    continuation of the reduction rule.

| Drug | Starting Dose | Target Dose |
|---|---|---|
| Enalapril | 2.5 mg twice daily | 10–20 mg twice daily |

> **OpenMedicine Calculator:** `calculate_x` — available via MCP.

## Other

A plain paragraph. It has two sentences.
"""


def test_markdown_structure_is_kept_as_context():
    (p,) = chunk_markdown(
        MD, source="g", section="dosing", title="T", cfg=ChunkConfig(min_words=150, max_words=200)
    )
    lines = p.text.splitlines()
    assert p.id == "g#dosing#0" and lines[0] == HEADING_MARK + "Dosing"
    assert "Men: Score ≥ 2: Drug X is recommended (Class I)." in lines  # lead-in on its item
    assert (
        "Apixaban: Dose Reduction: Reduce to 2.5 mg BID if two criteria are met. continuation of the reduction rule."
        in lines
    )  # parent label on the nested item, continuation line joined
    assert "Enalapril — Starting Dose: 2.5 mg twice daily; Target Dose: 10–20 mg twice daily" in lines
    assert HEADING_MARK + "Other" in lines and "A plain paragraph. It has two sentences." in lines
    assert "calculate_x" not in p.text
    small = chunk_markdown(MD, source="g", section="dosing", cfg=ChunkConfig(min_words=5, max_words=20))
    assert len(small) > 1 and all(q.text.startswith(HEADING_MARK) for q in small)
    with pytest.raises(ValueError, match="'#'"):
        chunk_markdown(MD, source="a#b", section="s")


def test_load_passages_jsonl_and_errors(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text(
        json.dumps({"id": "u1", "text": "Aspirin inhibits platelets.", "source": "https://x", "section": "s"})
        + "\n\n"
        + json.dumps({"id": "u2", "text": "Heparin potentiates antithrombin.", "source": "book"})
        + "\n"
    )
    ps = load_passages_jsonl(good)
    assert [(p.id, p.section) for p in ps] == [("u1", "s"), ("u2", "")]
    cases = {
        "{not json": r"p\.jsonl:1: not valid JSON",
        json.dumps({"id": "a", "source": "s"}): r"p\.jsonl:1: text: required",
        json.dumps(
            {"id": "a", "text": "t", "source": "s", "section": 3}
        ): r"p\.jsonl:1: section: must be a string",
        json.dumps(["a"]): r"p\.jsonl:1: passage must be a JSON object",
    }
    for line, pattern in cases.items():
        good.write_text(line + "\n")
        with pytest.raises(ValueError, match=pattern):
            load_passages_jsonl(good)
    row = json.dumps({"id": "dup", "text": "t", "source": "s"})
    good.write_text(row + "\n" + row + "\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: id: 'dup' already used on line 1"):
        load_passages_jsonl(good)
    with pytest.raises(ValueError, match="unknown guideline ids"):
        load_guideline_corpus(["no_such_guideline"])


def test_embeddings_are_cached_on_disk_by_version(hybrid, cache_dir, monkeypatch):
    corpus = hybrid.corpus
    files = list((cache_dir / "corpus" / corpus.version).glob("embeddings-*.npy"))
    assert len(files) == 1 and (cache_dir / "corpus" / corpus.version / "passages.jsonl").is_file()
    vecs = corpus.embeddings()
    assert vecs.shape == (len(corpus), 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)

    def no_encoding(texts):
        raise AssertionError("the cached matrix should have been loaded, not recomputed")

    monkeypatch.setattr(m3.text.embeddings, "embed", no_encoding)
    fresh = Corpus(corpus.passages, cache_dir=cache_dir)  # a new process would start like this
    assert np.array_equal(fresh.embeddings(), vecs)


# --- retrieval -------------------------------------------------------------------------------


def test_obvious_queries_find_their_guideline(hybrid, full):
    hits = hybrid.search("CHA2DS2-VASc score anticoagulation atrial fibrillation", k=3)
    assert len(hits) == 3 and any(p.source == "acc_aha_af_2023" for p, _ in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    bm25_full = HybridRetriever(full, dense=False)  # all 43 guidelines, lexical side only (no encoding)
    for query, source in [
        ("CHA2DS2-VASc score anticoagulation atrial fibrillation", "acc_aha_af_2023"),
        ("CURB-65 severity community acquired pneumonia", "bts_cap_2009"),
        ("qSOFA respiratory rate altered mentation systolic blood pressure", "sepsis3_2016"),
    ]:
        assert any(p.source == source for p, _ in bm25_full.search(query, k=3)), query
    assert bm25_full.version != full.version  # other settings, other rankings: another version


def test_search_many_matches_search_and_validates(hybrid):
    queries = ["apixaban dose reduction", "COPD FEV1/FVC ratio below 0.70"]
    many = hybrid.search_many(queries, k=4)
    assert [[p.id for p, _ in hs] for hs in many] == [
        [p.id for p, _ in hybrid.search(q, k=4)] for q in queries
    ]
    assert hybrid.search("zzz qqq", k=2)  # dense side always answers, even with no shared words
    with pytest.raises(ValueError):
        hybrid.search("x", k=0)
    with pytest.raises(ValueError):
        hybrid.search_many("a single string")  # type: ignore[arg-type]
    assert isinstance(hybrid, Retriever)


def test_callable_hook_merges_with_guidelines(hybrid):
    calls: list[str] = []

    def web_search(claim: str) -> list:
        calls.append(claim)
        return [
            {
                "id": "https://example.org/af",
                "text": "Web: anticoagulate AF when CHA2DS2-VASc is high.",
                "source": "example.org",
            },
            Passage("web#2", "Another web passage.", "example.org"),
            {"id": "https://example.org/af", "text": "duplicate id", "source": "example.org"},
        ]

    web = CallableRetriever(web_search, version="web-v1")
    assert [p.id for p, _ in web.search("q", k=5)] == ["https://example.org/af", "web#2"]
    merged = MergedRetriever([hybrid, web])
    hits = merged.search("CHA2DS2-VASc score anticoagulation atrial fibrillation", k=6)
    ids = [p.id for p, _ in hits]
    assert len(ids) == len(set(ids)) == 6
    assert "https://example.org/af" in ids[:2]  # rank 1 of the web list fuses near the top
    assert any(p.source == "acc_aha_af_2023" for p, _ in hits)
    assert merged.version == f"merged({hybrid.version},web-v1)"
    assert (
        CallableRetriever(web_search).version
        == "callable:test_callable_hook_merges_with_guidelines.<locals>.web_search"
    )

    bad = CallableRetriever(lambda c: [{"id": "x", "source": "s"}], version="bad")
    with pytest.raises(ValueError, match="bad: result \\[0\\].*text: required"):
        bad.search("claim")
    with pytest.raises(ValueError, match="must return a list"):
        CallableRetriever(lambda c: "text", version="str").search("claim")
    with pytest.raises(ValueError, match="weights"):
        MergedRetriever([hybrid, web], weights=[1.0])
