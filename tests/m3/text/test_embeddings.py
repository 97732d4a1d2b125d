"""The bundled MiniLM encoder: offline load, shape/normalisation, determinism, cache, cosine."""

import threading

import numpy as np
import pytest

from m3.text import embeddings
from m3.text.embeddings import DIM, cosine, embed


@pytest.fixture(scope="module")
def loaded():
    embeddings.get_model()  # load once for the module (a few seconds)
    return embeddings


def test_shape_dtype_and_unit_norm(loaded):
    v = embed(["Seek emergency care now.", "Drink plenty of water."])
    assert v.shape == (2, DIM) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert embed([]).shape == (0, DIM)


def test_deterministic_and_cached(loaded):
    texts = ["Take ibuprofen with food.", "Call 911 if you have chest pain."]
    embeddings.clear_cache()
    a = embed(texts)
    b = embed(texts)
    np.testing.assert_array_equal(a, b)
    info = embeddings.cache_info()
    assert info["misses"] == 2 and info["hits"] == 2
    # a fresh encode (cache cleared) in a different batch gives the same vectors up to float noise
    embeddings.clear_cache()
    c = embed([texts[1], "unrelated filler sentence", texts[0]])
    np.testing.assert_allclose(c[[2, 0]], a, atol=1e-5)
    # callers get copies: mutating the result must not corrupt the cache
    a[:] = 0
    np.testing.assert_allclose(embed(texts), b, atol=1e-6)


def test_duplicates_encoded_once(loaded):
    embeddings.clear_cache()
    v = embed(["same text", "same text"])
    np.testing.assert_array_equal(v[0], v[1])
    assert embeddings.cache_info()["misses"] == 1


def test_lru_is_bounded(loaded):
    embeddings.clear_cache()
    try:
        embeddings.configure(cache_size=3)
        embed([f"sentence number {i}" for i in range(5)])
        assert embeddings.cache_info()["size"] == 3
    finally:
        embeddings.configure(cache_size=20_000)


def test_paraphrase_closer_than_unrelated(loaded):
    para, same, other = embed(
        [
            "Go to the emergency room right away.",
            "Seek emergency medical care immediately.",
            "Eating more vegetables is good for your heart.",
        ]
    )
    assert cosine(para, same) > cosine(para, other) + 0.2
    assert cosine(para, same) > 0.6


def test_cosine_shapes_and_zero_vector():
    a = np.array([1.0, 0.0])
    b = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    assert cosine(a, a) == pytest.approx(1.0)
    np.testing.assert_allclose(cosine(a, b), [1.0, 0.0, 0.0])
    assert cosine(b, b).shape == (3, 3)
    with pytest.raises(ValueError, match="dimension"):
        cosine(a, np.ones(3))


def test_user_errors_are_value_errors(loaded, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="list"):
        embed("a single string")
    monkeypatch.setenv(embeddings.ENV_MODEL, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="M3_EMBED_MODEL"):
        embeddings.model_path()
    monkeypatch.setenv(embeddings.ENV_MODEL, str(tmp_path))
    assert embeddings.model_path() == tmp_path.resolve()


def test_thread_safe_concurrent_embed(loaded):
    embeddings.clear_cache()
    texts = [f"concurrent sentence {i}" for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = embed(texts)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(1, 4):
        np.testing.assert_allclose(results[k], results[0], atol=1e-5)
