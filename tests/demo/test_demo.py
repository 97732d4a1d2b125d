"""`make demo`'s orchestration end to end on a minimal configuration (every step, tiny sizes)."""

import json
import socket

import pytest

from demo import run as demo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_step_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo steps"):
        demo.main([f"out_dir={tmp_path}", "steps=[base,stage9]"])


def test_engine_vllm_serves_the_draft_and_evaluates_through_it(tmp_path):
    cfg = demo.compose("demo", ["preset=real", "engine=vllm"])
    serve = demo.serve_command(cfg, tmp_path)
    assert (
        "engine=vllm" in serve
        and "draft=models:/m3-draft@real" in serve
        and "model=models:/m3-mopd@real" in serve
    )
    for step in demo.EVALS:  # eval_via_endpoint=false in the preset: vLLM batches, so the evals use it
        cmd = demo._command(cfg, tmp_path, step, serving=True)
        assert f"endpoint=http://127.0.0.1:{cfg.port}/v1" in cmd and "endpoint_model=m3" in cmd
    assert "engine=transformers" in demo.serve_command(demo.compose("demo"), tmp_path)
    with pytest.raises(ValueError, match="engine must be transformers or vllm"):
        demo.compose("demo", ["engine=sglang"])


@pytest.mark.slow
def test_demo_runs_every_step_serves_and_reports(mlflow_store, tmp_path):
    out = tmp_path / "demo"
    overrides = [f"out_dir={out}", f"port={_free_port()}", "expert_steps=1", "distill_steps=1", "mopd_steps=1",
                 "draft_steps=2", "quant_eval_examples=1", "healthbench_examples=2", "hallu_examples=1",
                 "osce_cases=1", "osce_inquiry_turns=1", "max_new_tokens=8"]  # fmt: skip
    assert demo.main(overrides) == 0
    rows = json.loads((out / "rows.json").read_text())
    assert [r["step"] for r in rows][:1] == ["base"] and len(rows) == len(demo.STEPS) - 1
    served = [r for r in rows if r["step"] in ("healthbench", "hallu", "osce")]
    assert all("127.0.0.1" in r["command"] for r in served)  # the evals went through the server
    md = (out / "report.md").read_text()
    for name in ("m3-base", "m3-distill", "m3-mopd", "m3-draft", "m3-w4"):
        assert name in md
    with socket.socket() as s:  # the server is gone
        assert s.connect_ex(("127.0.0.1", int(overrides[1].split("=")[1]))) != 0
    assert demo.main(overrides) == 0  # a re-run resumes: every stage finds its registered output
