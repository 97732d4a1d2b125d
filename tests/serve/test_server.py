"""The local server starts, answers through the OpenAI client on the tiny model, and is stopped."""

from __future__ import annotations

import json
import socket

import httpx

from m3 import registry
from m3.config import compose
from serve import launch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transformers_serve_answers_openai_client(tiny_dir, mlflow_store, tmp_path, capsys):
    registry.publish(tiny_dir, "m3-mopd", stage="stage3")
    port = _free_port()
    summary = tmp_path / "serve.json"
    cfg = compose(
        "serve/serve",
        [
            f"port={port}",
            "foreground=false",
            "smoke=true",
            "smoke_max_tokens=8",
            "ready_timeout_s=240",
            f"log_file={tmp_path / 'server.log'}",
            f"summary_out={summary}",
        ],
    )
    try:
        assert launch.main(cfg) == 0
    finally:
        print((tmp_path / "server.log").read_text()[-2000:])
    out = capsys.readouterr().out
    assert "smoke http://127.0.0.1" in out and ": ok" in out
    assert "thinking" in out and "no_thinking" in out
    row = json.loads(summary.read_text())
    assert row["step"] == "serve" and row["metric"] == "smoke_tokens_per_s" and row["value"] > 0
    try:  # the server (its whole process group) is gone after main returns
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0)
        raise AssertionError("server still answering after main returned")
    except httpx.TransportError:
        pass
