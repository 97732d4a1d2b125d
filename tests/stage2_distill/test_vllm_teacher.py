"""vLLM teacher job: vLLM outputs -> stage-2 records (sampled-token log-prob, mask on teacher tokens),
the same records as the local path, and the consultation path on a stand-in server."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest

from m3.data.prompts import domain_rows
from m3.rl.engine import LocalRLConfig
from stage2_distill import vllm_teacher as vt
from stage2_distill.rollouts import teacher_samples


# Stand-ins with vLLM's attribute names (vllm/outputs.py, vllm/logprobs.py)
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: None
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def _output(prompt_ids, token_ids, logprob_dicts):
    c = CompletionOutput(0, "", token_ids, None, logprob_dicts)
    return RequestOutput("r", None, prompt_ids, None, [c])


def test_records_pick_the_sampled_tokens_logprob_not_the_top1():
    # position 0: sampled 11 (rank 2) while 99 is top-1; position 1: sampled 12 is top-1
    lps = [
        {11: Logprob(-1.5, rank=2), 99: Logprob(-0.3, rank=1)},
        {12: Logprob(-0.25, rank=1)},
    ]
    rows = [{"extra_info": {"prompt_id": "p7"}}]
    (rec,) = vt.records_from_outputs("healthcare", rows, [_output([1, 2, 3], [11, 12], lps)])
    assert rec == {
        "domain": "healthcare",
        "prompt_ids": [1, 2, 3],
        "response_ids": [11, 12],
        "loss_mask": [1, 1],  # single-turn: every response token is the teacher's
        "teacher_logprobs": [-1.5, -0.25],
        "source_id": "p7",
    }


def test_missing_or_absent_logprobs_are_errors():
    rows = [{"extra_info": {}}]
    with pytest.raises(ValueError, match="logprobs=0"):
        vt.records_from_outputs("general", rows, [_output([1], [5], None)])
    with pytest.raises(ValueError, match="sampled token 5"):
        vt.records_from_outputs("general", rows, [_output([1], [5], [{6: Logprob(-0.1)}])])
    with pytest.raises(ValueError, match="2 log-prob positions for 1"):
        vt.records_from_outputs("general", rows, [_output([1], [5], [{5: Logprob(-0.1)}, {5: Logprob(-1)}])])
    with pytest.raises(ValueError, match="2 vLLM outputs for 1 rows"):
        vt.records_from_outputs("general", rows, [_output([1], [5], [{5: Logprob(-0.1)}])] * 2)


def test_make_record_keeps_logprobs_on_teacher_tokens_only():
    rec = vt.make_record(
        "inquiry", {"extra_info": {"case_id": 3}}, [1], [7, 8, 9], [1, 0, 1], [-1.0, -2.0, -3.0]
    )
    assert rec["teacher_logprobs"] == [-1.0, 0.0, -3.0] and rec["source_id"] == "3"


def test_sampling_kwargs_map_like_verls_vllm_server():
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 16}
    kw = vt.vllm_sampling_kwargs(params, seed=5)
    assert kw == {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": 0, "max_tokens": 16, "seed": 5}
    assert vt.vllm_sampling_kwargs({"max_new_tokens": 4}, None) == {"max_tokens": 4, "logprobs": None}


def test_same_records_as_the_local_path(tiny_dir, tmp_path):
    """vLLM's outputs for the local teacher's own samples give exactly the local records."""
    from transformers import AutoTokenizer

    rows = domain_rows("healthcare", 1)
    (local,) = teacher_samples(tiny_dir, "healthcare", rows, LocalRLConfig(max_new_tokens=6), tmp_path / "w")
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert vt.render_prompt_ids(tok, rows[0]) == local["prompt_ids"]
    lps = [
        {t: Logprob(lp, rank=1)}
        for t, lp in zip(local["response_ids"], local["teacher_logprobs"], strict=True)
    ]
    (rec,) = vt.records_from_outputs(
        "healthcare", rows, [_output(local["prompt_ids"], local["response_ids"], lps)]
    )
    assert rec == local


def test_consultation_records_through_the_agent_loop(tiny_dir):
    """Inquiry: the m3_consultation loop on a verl-style server (LocalServer standing in for vLLM)."""
    from transformers import AutoTokenizer

    from m3.rl.local_server import LocalServer

    rows = domain_rows("inquiry", 1, max_inquiry_turns=3)  # short consultations
    server = LocalServer(tiny_dir, seed=0, default_max_tokens=4)
    (rec,) = vt.consultation_records(
        server, AutoTokenizer.from_pretrained(tiny_dir), "qwen3_moe", rows,
        temperature=1.0, max_turn_tokens=4, max_response_length=256,
    )  # fmt: skip
    assert rec["domain"] == "inquiry" and rec["source_id"] == rows[0]["extra_info"]["case_id"]
    assert 0 in rec["loss_mask"] and 1 in rec["loss_mask"]  # simulator turns are not teacher tokens
    pairs = list(zip(rec["teacher_logprobs"], rec["loss_mask"], strict=True))
    assert all(lp == 0.0 for lp, m in pairs if not m) and all(lp < 0 for lp, m in pairs if m)


def test_teacher_command():
    cmd = vt.teacher_command(
        "/ckpt/t", "inquiry", "rows.jsonl", "out.parquet", tensor_parallel_size=8, temperature=1.0,
        max_tokens=2048, max_response_length=8192, seed=3, ray_address="http://head:8265",
    )  # fmt: skip
    i = cmd.index("--")
    assert cmd[:i] == ["ray", "job", "submit", "--address", "http://head:8265", "--entrypoint-num-gpus", "8"]
    args = cmd[i + 1 :]
    assert args[:3] == ["python3", "-m", "stage2_distill.vllm_teacher"]
    assert dict(zip(args[3::2], args[4::2], strict=True)) == {
        "--teacher": "/ckpt/t", "--domain": "inquiry", "--rows": "rows.jsonl", "--out": "out.parquet",
        "--temperature": "1.0", "--max-tokens": "2048", "--max-response-length": "8192", "--seed": "3",
        "--tensor-parallel-size": "8",
    }  # fmt: skip


def test_engine_kwargs_cuda_and_cpu():
    cuda = vt.engine_kwargs("/ckpt/t", seed=3, tensor_parallel_size=8)
    assert cuda == {"model": "/ckpt/t", "tensor_parallel_size": 8, "seed": 3, "trust_remote_code": False,
                    "dtype": "auto"}  # fmt: skip
    cpu = vt.engine_kwargs("/m", seed=0, cpu=True, enforce_eager=True, max_model_len=2048)
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] and cpu["max_model_len"] == 2048
    assert vt.engine_kwargs("/m", seed=0, cpu=True, dtype="bfloat16")["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="one engine process"):
        vt.engine_kwargs("/m", seed=0, tensor_parallel_size=2, cpu=True)


def test_inquiry_without_verl_fails_before_the_engine(monkeypatch):
    monkeypatch.setitem(sys.modules, "m3.rl.agent_loop", None)  # as in .venv-serve: no verl
    with pytest.raises(ValueError, match="needs verl"):
        vt.generate("/no/such/teacher", "inquiry", [])
    with pytest.raises(ValueError, match="unknown domain"):
        vt.generate("/no/such/teacher", "surgery", [])
