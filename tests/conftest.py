"""Shared fixtures: offline environment, a tiny checkpoint built once, an isolated MLflow store."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny Qwen3-MoE checkpoint (preset tiny, seed 0) with the Qwen3 tokenizer."""
    from m3.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", "tiny", 0)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh sqlite tracking store and artifact root for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("M3_ARTIFACT_ROOT", str(tmp_path / "mlruns" / "artifacts"))
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
