"""Benchmark reports survive an optional service being absent (a row skipped with its reason)."""

import importlib.util

from m3.config import REPO_ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fact_cache_report_without_redis_rows():
    replay = _load("fact_cache_replay")
    rows = [("L1 memory", 1, 5e5, 0.01, 0.02, ""), ("L2, precomputed embeddings, 1 thread(s)", 1, 2e4, 0.1, 0.2, ""),
            ("L2, MiniLM embedding", 1, 300.0, 3.0, 5.0, "")]  # fmt: skip
    best, redis_line = replay.best_rates(rows)
    assert "L1 Redis" not in best and best["L1 memory"] == 5e5
    assert redis_line.startswith("Redis rows skipped: redis-server is not installed")
    best, redis_line = replay.best_rates([*rows, ("L1 Redis (local, MGET)", 8, 4e4, 0.2, 0.3, "")])
    assert redis_line == "40,000/s through local Redis"
