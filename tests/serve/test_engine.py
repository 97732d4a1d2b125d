"""vLLM's CPU build on the real model (SmolLM2-135M-Instruct): chat, greedy equal to transformers,
W4A16, Eagle3 decoding with the ungated draft and with the gated one (our vLLM plugin), and the
stage-2 teacher job (stage2_distill.vllm_teacher) whose sampled-token log-probs match transformers'.

    make test-engine        # builds .venv-serve first (make setup-serve); 3-6.5 min here after the install

Four server starts (target, + ungated draft, + gated draft, W4), one at a time, in this file's order,
then two offline teacher jobs (healthcare, general) after the last server is stopped.
Greedy comparisons use token ids end to end (/v1/completions with `prompt` as ids and
`return_token_ids`), so chat-template or detokenisation differences cannot hide a wrong token.
"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from m3.config import REPO_ROOT
from serve import commands
from serve.spec_metrics import acceptance_length, scrape
from tests.serve.conftest import SERVE_PYTHON

pytestmark = pytest.mark.engine

PROMPTS = [
    "I have had a headache and fever for two days. What should I do?",
    "What are the common side effects of ibuprofen?",
    "My child has a rash and a mild cough. When should I see a doctor?",
]
MAX_TOKENS = 32


@pytest.fixture(scope="session")
def tokenizer(real_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(real_model)


@pytest.fixture(scope="session")
def prompt_ids(tokenizer) -> list[list[int]]:
    return [
        list(
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)[
                "input_ids"
            ]
        )
        for p in PROMPTS
    ]


@pytest.fixture(scope="session")
def hf_greedy(real_model, prompt_ids) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (float32, batch 1, eos kept)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
            out.append(gen[0, len(ids) :].tolist())
    return out


def complete_ids(server, ids: list[int]) -> list[int]:
    r = httpx.post(
        f"{server.base_url}/completions",
        json={
            "model": "m3",
            "prompt": ids,
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
            "return_token_ids": True,
        },
        timeout=300.0,
    )
    r.raise_for_status()
    return r.json()["choices"][0]["token_ids"]


def _strip_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens  # vLLM does not return the stop token


@pytest.fixture(scope="session")
def target_alone(vllm_servers, real_model, prompt_ids) -> list[list[int]]:
    """vLLM's greedy tokens for PROMPTS from the target alone (the reference of the draft tests)."""
    server = vllm_servers.get("target", real_model)
    return [complete_ids(server, ids) for ids in prompt_ids]


def test_chat_completion_answers(vllm_servers, real_model, tokenizer, hf_greedy):
    import openai

    server = vllm_servers.get("target", real_model)
    client = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=300.0)
    resp = client.chat.completions.create(
        model="m3", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=MAX_TOKENS, temperature=0.0
    )
    answer = resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0 and len(answer.split()) > 5
    # the chat route applies the same ChatML template: its text is transformers' greedy text
    assert answer == tokenizer.decode(hf_greedy[0], skip_special_tokens=True).strip()


def test_greedy_equals_transformers(target_alone, hf_greedy, tokenizer):
    eos = tokenizer.eos_token_id
    assert [_strip_eos(t, eos) for t in target_alone] == [_strip_eos(t, eos) for t in hf_greedy]


@pytest.mark.parametrize("variant", ["ungated", "gated"])
def test_eagle3_draft_keeps_greedy_and_counts_tokens(
    vllm_servers, real_model, drafts, prompt_ids, target_alone, variant
):
    """The draft loads (the gated one through serve/vllm_plugin.py), decoding stays token-identical to
    the target alone, and /metrics counts drafts, draft tokens (k = 3 each) and accepted tokens."""
    server = vllm_servers.get(variant, real_model, drafts[variant])
    log = server.log.read_text(errors="replace")
    arch = "LlamaForCausalLMEagle3Gated" if variant == "gated" else "LlamaForCausalLMEagle3"
    assert f"Resolved architecture: {arch}" in log and "(2, 15, 27)" in log
    before = scrape(server.root_url)
    got = [complete_ids(server, ids) for ids in prompt_ids]
    c = scrape(server.root_url) - before
    assert got == target_alone
    assert c.drafts > 0 and c.draft_tokens == 3 * c.drafts
    assert 0 <= c.accepted <= c.draft_tokens and sum(c.accepted_per_pos.values()) == c.accepted
    assert acceptance_length(c) >= 1.0


_FLAGS = commands.host_cpu_flags()
HOST_AVX512 = _FLAGS is None or commands.AVX512 <= _FLAGS  # unknown flags: the launcher lets it start


def test_w4a16_needs_avx512_on_vllm_cpu(vllm_servers, w4_model):
    """vLLM's AVX2 kernel library has no W4A16 GEMM (the premise of commands.check_cpu_servable);
    on a host without AVX-512 the launcher refuses the W4 checkpoint before starting a server."""
    probe = (
        "import torch\ntry:\n    import vllm._C_AVX2\n"  # loads the library, then fails on its module name
        "except ImportError:\n    pass\nprint(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"
    )
    out = subprocess.run([str(SERVE_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
    if not HOST_AVX512:
        with pytest.raises(ValueError, match="no AVX-512"):
            vllm_servers.get("w4", w4_model)
        assert not (vllm_servers.root / "w4.log").exists()  # no server was started


@pytest.mark.skipif(not HOST_AVX512, reason="vLLM's CPU W4A16 GEMM needs AVX-512 (test above)")
def test_w4a16_serves(vllm_servers, w4_model, prompt_ids):
    server = vllm_servers.get("w4", w4_model)
    log = server.log.read_text(errors="replace")
    assert "Using CPUWNA16LinearKernel for CompressedTensorsWNA16" in log
    first, again = complete_ids(server, prompt_ids[0]), complete_ids(server, prompt_ids[0])
    assert len(first) > 0 and first == again  # greedy is deterministic


# --- the stage-2 teacher job on vLLM's CPU build ---------------------------------------------------
TEACHER_ROWS = 3  # per domain
TEACHER_MAX_TOKENS = 32
# Both sides float32; vLLM's CPU kernels (its attention, fused RMSNorm and SiLU-and-mul, batched
# GEMMs) round differently from transformers' eager ones. Measured here (16 rows x 128 tokens per
# domain, 3369 tokens): mean |diff| 5.9e-6 / 6.1e-6, max 4.3e-5 / 3.8e-5 (healthcare / general); the
# same job in bfloat16 is off by mean 3.7e-2, max 0.20. The bounds leave ~10x room over float32 and
# sit ~700x below bf16, so a dtype, temperature or token-alignment slip fails.
LOGPROB_MEAN_TOL = 5e-5
LOGPROB_MAX_TOL = 5e-4


@pytest.fixture(scope="module")
def hf_model(real_model):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.float32).eval()


def teacher_forced_logprobs(model, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
    """log pi(response[t] | prompt, response[:t]) for every t, from one float32 forward pass."""
    import torch

    ids_1T = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits_RV = model(ids_1T).logits[0, len(prompt_ids) - 1 : -1].float()
    logp_RV = torch.log_softmax(logits_RV, dim=-1)
    return logp_RV.gather(-1, torch.tensor(response_ids)[:, None])[:, 0].tolist()


@pytest.mark.parametrize("domain", ["healthcare", "general"])
def test_teacher_job_logprobs_match_transformers(
    vllm_servers, real_model, tokenizer, hf_model, tmp_path, domain
):
    """`.venv-serve/bin/python -m stage2_distill.vllm_teacher` samples at temperature 1 with logprobs=0;
    every stored log-prob is transformers' teacher-forced log-prob of that token (float32)."""
    from m3.data.prompts import domain_rows
    from serve import launch
    from stage2_distill import vllm_teacher as vt
    from stage2_distill.records import read_records

    vllm_servers.stop()  # 2 CPU cores: one engine at a time
    rows = domain_rows(domain, TEACHER_ROWS)
    vt.write_rows(rows, tmp_path / "rows.jsonl")
    out, log = tmp_path / "teacher.jsonl", tmp_path / "teacher.log"
    python = launch.SERVE_VENV_BIN / "python"  # vLLM's CPU build (make setup-serve)
    argv = [str(python), "-m", "stage2_distill.vllm_teacher", "--teacher", str(real_model)]
    argv += ["--domain", domain, "--rows", str(tmp_path / "rows.jsonl"), "--out", str(out)]
    argv += ["--temperature", "1.0", "--max-tokens", str(TEACHER_MAX_TOKENS), "--enforce-eager"]
    t0 = time.perf_counter()
    with open(log, "wb") as f:  # its own session: launch.stop ends the engine core process with it
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        rc = proc.wait(timeout=600)
    finally:
        launch.stop(proc)
    job_s = time.perf_counter() - t0
    assert rc == 0, f"{' '.join(argv)}\n--- log tail ---\n{log.read_text(errors='replace')[-3000:]}"

    records = read_records(out)  # what the stage-2 trainers read
    assert [r["source_id"] for r in records] == [r["extra_info"]["prompt_id"] for r in rows]
    diffs = []
    for row, rec in zip(rows, records, strict=True):
        assert rec["domain"] == domain and rec["prompt_ids"] == vt.render_prompt_ids(tokenizer, row)
        assert 0 < len(rec["response_ids"]) <= TEACHER_MAX_TOKENS and set(rec["loss_mask"]) == {1}
        hf = teacher_forced_logprobs(hf_model, rec["prompt_ids"], rec["response_ids"])
        diffs += [abs(a - b) for a, b in zip(rec["teacher_logprobs"], hf, strict=True)]
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    print(
        f"\n{domain}: {len(diffs)} sampled tokens of {len(records)} responses, |vLLM - transformers| "
        f"log-prob mean {mean:.3e} max {worst:.3e} (teacher job {job_s:.1f}s)"
    )
    assert mean < LOGPROB_MEAN_TOL and worst < LOGPROB_MAX_TOL
