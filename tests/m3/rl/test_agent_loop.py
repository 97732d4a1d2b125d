"""The consultation agent loop end to end: tiny Qwen3-MoE behind LocalServer, offline patient simulator.

Checks the token stream against what the server actually generated (no re-encoding of policy text),
the masks of patient/instruction tokens, the per-step data in extra_fields, and SPAR's rm_scores
round trip through `ConsultationOutput.as_dict` and `m3.rl.spar.decode_step_rewards`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

from m3.clinic.case_files import load_cases
from m3.clinic.transcript import STAGES
from m3.config import REPO_ROOT
from m3.rl import agent_loop
from m3.rl.agent_loop import NAME, ConsultationOutput, build_agent_loop
from m3.rl.local_server import LocalServer
from m3.rl.seeds import mix_seed
from m3.rl.spar import decode_step_rewards
from m3.text.reasoning import answer_text

CASES = REPO_ROOT / "data" / "agentclinic_medqa.jsonl"
TURN_TOKENS, INQUIRY_TURNS = 8, 3
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}


def run_episode(
    tiny_dir: Path, response_length: int, extra: dict
) -> tuple[ConsultationOutput, LocalServer, object]:
    """One rollout of case 0, built the way verl's AgentLoopWorker builds an agent loop."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    server = LocalServer(tiny_dir, seed=0, record=True)
    case = load_cases(CASES)[0]
    extra_info = {"case": case.to_dict(), "simulator": {"backend": "offline"}, "max_turn_tokens": TURN_TOKENS}
    extra_info.update(extra)
    row = {
        "raw_prompt": [],
        "extra_info": extra_info,
        "data_source": "agentclinic",
        "index": 0,
        "global_steps": 1,
    }

    async def main() -> ConsultationOutput:
        loop = build_agent_loop(  # verl's AgentLoopWorker._run_agent_loop construction
            server,
            tokenizer,
            max_response_length=response_length,
            model_type=AutoConfig.from_pretrained(tiny_dir).model_type,
        )
        return await loop.run(dict(SAMPLING), **row)

    return asyncio.run(main()), server, tokenizer


@pytest.fixture(scope="module")
def episode(tiny_dir):
    extra = {"episode": {"max_inquiry_turns": INQUIRY_TURNS}, "interruption": "end_of_turn"}
    return run_episode(tiny_dir, 4096, extra)


def test_registered_for_verl():
    agent_loop.register()
    agent_loop.register()  # idempotent
    assert _agent_loop_registry[NAME] == {"_target_": "m3.rl.agent_loop.ConsultationAgentLoop"}


def test_token_stream_is_the_servers_tokens(episode):
    out, server, tokenizer = episode
    assert isinstance(out, ConsultationOutput)
    assert len(out.response_ids) == len(out.response_mask) == len(out.response_logprobs)
    n_prompt = len(out.prompt_ids)
    stream = out.prompt_ids + out.response_ids
    assert tokenizer.decode(out.prompt_ids).startswith("<|im_start|>system\n")
    assert tokenizer.decode(out.prompt_ids).endswith("<|im_end|>\n<|im_start|>assistant\n")

    records = server.history
    assert len(records) == INQUIRY_TURNS + 3  # no end marker from a random model: turn limit, then 3 stages
    assert records[0].prompt_ids == out.prompt_ids
    expected_mask = [0] * len(out.response_ids)
    expected_logprobs = [0.0] * len(out.response_ids)
    for rec in records:
        # every call saw a prefix of the final stream and its answer sits right after it, unchanged
        start, end = len(rec.prompt_ids), len(rec.prompt_ids) + len(rec.token_ids)
        assert stream[:start] == rec.prompt_ids and stream[start:end] == rec.token_ids
        assert 1 <= len(rec.token_ids) <= TURN_TOKENS and rec.sampling_params["max_tokens"] <= TURN_TOKENS
        expected_mask[start - n_prompt : end - n_prompt] = [1] * len(rec.token_ids)
        expected_logprobs[start - n_prompt : end - n_prompt] = rec.log_probs
    assert out.response_mask == expected_mask
    assert out.response_logprobs == pytest.approx(expected_logprobs)
    assert out.extra_fields["step_spans"] == [
        [len(r.prompt_ids) - n_prompt, len(r.prompt_ids) + len(r.token_ids) - n_prompt] for r in records
    ]


def test_policy_text_and_context_tokens(episode):
    out, server, tokenizer = episode
    turns = out.extra_fields["transcript"]["turns"]
    doctor = [t for t in turns if t["role"] == "doctor"]
    assert [answer_text(tokenizer.decode(r.token_ids, skip_special_tokens=True)) for r in server.history] == [
        t["text"] for t in doctor
    ]
    # the mask-0 runs between doctor turns are exactly the ChatML user turn holding that step's context
    # (patient reply + interruption, or stage instruction), plus the closing <|im_end|> of a cut-off turn
    spans = out.extra_fields["step_spans"]
    contexts, current = [], []
    for t in turns:
        if t["role"] == "doctor":
            contexts.append("\n\n".join(current))
            current = []
        else:
            current.append(t["text"])
    for j in range(1, len(spans)):
        gap = tokenizer.decode(out.response_ids[spans[j - 1][1] : spans[j][0]])
        closed = server.history[j - 1].token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        head = "" if closed else "<|im_end|>"
        assert gap == f"{head}\n<|im_start|>user\n{contexts[j]}<|im_end|>\n<|im_start|>assistant\n"
        assert set(out.response_mask[spans[j - 1][1] : spans[j][0]]) == {0}
    assert any(t["role"] == "interrupt" for t in turns) and out.extra_fields["interrupted"] is not None
    assert any(t["role"] == "patient" for t in turns)


def test_step_data_in_extra_fields(episode):
    out, _, _ = episode
    ef = out.extra_fields
    n = INQUIRY_TURNS + 3
    assert ef["step_stages"] == ["inquiry"] * INQUIRY_TURNS + ["ddx", "lab", "diagnosis"]
    assert len(ef["step_spans"]) == len(ef["step_violations"]) == len(ef["step_gammas"]) == n
    assert all(0.0 <= g <= 1.0 for g in ef["step_gammas"])
    for vs, g in zip(ef["step_violations"], ef["step_gammas"], strict=True):
        assert g == min((v["lam"] for v in vs), default=1.0)
    assert set(ef["stage_scores"]) == set(STAGES)
    assert ef["ended_by"] == "turn_limit" and ef["stopped"] is None
    assert ef["case_id"] == "agentclinic_medqa-0000"
    assert ef["min_global_steps"] == ef["max_global_steps"] == 0
    assert out.num_turns == 2 * n  # n user turns (instruction / patient) and n doctor turns
    assert out.metrics.generate_sequences > 0


def test_as_dict_writes_spar_rm_scores(episode):
    out, _, _ = episode
    n = len(out.extra_fields["step_gammas"])
    gammas = [0.1, 1.0, 0.9, 1.0, 0.7, 0.2][:n]
    penalized = out.model_copy(update={"extra_fields": {**out.extra_fields, "step_gammas": gammas}})
    for o, expected_gammas in ((out, out.extra_fields["step_gammas"]), (penalized, gammas)):
        o.reward_score = 0.8  # what verl's reward loop sets before calling as_dict (R_global)
        d = o.as_dict()
        assert (
            d["responses"].tolist() == out.response_ids
            and d["rollout_log_probs"].shape == d["rm_scores"].shape
        )
        r_global, step_returns = decode_step_rewards(d["rm_scores"][None], d["response_mask"][None])
        assert r_global.item() == pytest.approx(0.8, abs=1e-6)
        assert step_returns[0].tolist() == pytest.approx([0.8 * g for g in expected_gammas], abs=1e-6)
    assert "rm_scores" not in ConsultationOutput(**{**out.model_dump(), "reward_score": None}).as_dict()


def test_response_budget_stops_between_turns(tiny_dir):
    out, server, _ = run_episode(tiny_dir, 40, {})
    ef = out.extra_fields
    assert ef["stopped"] == "response_length" and len(out.response_ids) <= 40
    assert len(ef["step_gammas"]) == len(ef["step_spans"]) == len(server.history) >= 1
    assert out.response_ids[-1] == server.history[-1].token_ids[-1]  # the stream ends on a doctor turn
    out.reward_score = 1.0
    d = out.as_dict()
    assert torch.isclose(d["rm_scores"].sum(), torch.tensor(1.0))


def test_later_stage_continues_a_transcript(tiny_dir, episode):
    """SPAR's segmented pipeline: the DDX stage of a case whose inquiry ran earlier (it goes in the prompt)."""
    prior = dict(episode[0].extra_fields["transcript"])
    prior["turns"] = [t for t in prior["turns"] if t["stage"] == "inquiry"]
    out, server, tokenizer = run_episode(tiny_dir, 512, {"stages": ["ddx"], "transcript": prior})
    ef = out.extra_fields
    assert ef["step_stages"] == ["ddx"] and len(ef["step_gammas"]) == 1 and len(server.history) == 1
    prompt = tokenizer.decode(out.prompt_ids)
    assert (
        prior["turns"][-1]["text"] in prompt and prompt.count("<|im_start|>assistant\n") == INQUIRY_TURNS + 1
    )
    assert out.response_ids == server.history[0].token_ids and set(out.response_mask) == {1}
    assert set(ef["stage_scores"]) == {"inquiry", "ddx"}


def test_bad_rows_raise_value_error_with_the_fix():
    with pytest.raises(ValueError, match="extra_info\\['case'\\]"):
        agent_loop.EpisodeSpec.from_extra_info({"index": 3})
    case = load_cases(CASES)[0].to_dict()
    with pytest.raises(ValueError, match="consecutive stages"):
        agent_loop.EpisodeSpec.from_extra_info({"case": case, "stages": ["inquiry", "lab"]})
    with pytest.raises(ValueError, match="earlier stages"):
        agent_loop.EpisodeSpec.from_extra_info({"case": case, "stages": ["ddx"]})
    with pytest.raises(ValueError, match="unknown keys"):
        agent_loop.EpisodeSpec.from_extra_info({"case": case, "simulator": {"backnd": "offline"}})


def test_local_server_sampling(tiny_dir):
    server = LocalServer(tiny_dir, seed=0)
    assert 151645 in server.eos_token_ids  # <|im_end|>, from the checkpoint's generation_config
    prompt = [151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198]
    params = {"temperature": 1.0, "max_tokens": 6, "logprobs": True, "seed": 7}
    a, b = server.generate_tokens(prompt, params), server.generate_tokens(prompt, params)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 6 and all(lp <= 0 for lp in a.log_probs)
    greedy = server.generate_tokens(prompt, {"temperature": 0, "max_tokens": 4, "logprobs": False})
    assert greedy.log_probs is None
    # a stop token ends the response and is part of it, as vLLM returns EOS
    stopped = server.generate_tokens(
        prompt, {"temperature": 0, "max_tokens": 4, "stop_token_ids": greedy.token_ids[:1]}
    )
    assert stopped.token_ids == greedy.token_ids[:1]
    with pytest.raises(ValueError, match="unsupported sampling_params"):
        server.generate_tokens(prompt, {"temprature": 1.0})


def test_batched_server_equals_one_at_a_time(tiny_dir):
    """max_batch > 1: concurrent requests go through one left-padded generate() call, greedy tokens
    and log-probs as one request at a time (up to float32 rounding of the padded batch)."""
    prompts = [[151644, 872, 198] + [100 + i] * (i + 1) for i in range(5)]
    params = {"temperature": 0.0, "max_tokens": 6, "logprobs": True}
    one = LocalServer(tiny_dir, seed=0)
    expected = [one.generate_tokens(p, params) for p in prompts]
    batched = LocalServer(tiny_dir, seed=0, max_batch=8)

    async def go():
        return await asyncio.gather(
            *(batched.generate(f"r{i}", prompt_ids=p, sampling_params=params) for i, p in enumerate(prompts))
        )

    got = asyncio.run(go())
    assert batched._batcher.batches == [5]  # one generate() call for the five requests
    for e, g in zip(expected, got, strict=True):
        assert g.token_ids == e.token_ids
        assert max(abs(a - b) for a, b in zip(g.log_probs, e.log_probs, strict=True)) < 1e-4


def test_seeded_requests_draw_the_same_tokens_alone_or_batched_in_any_order(tiny_dir):
    """A request's `seed` fixes its samples (vLLM's per-request seed): alone, or batched with others
    in either arrival order, it draws the same tokens; without seeds the batch order changes them."""
    prompts = [[151644, 872, 198] + [100 + i] * (i + 1) for i in range(4)]
    seeded = [
        {"temperature": 1.0, "max_tokens": 6, "logprobs": True, "seed": mix_seed(0, 1, i)} for i in range(4)
    ]
    alone = LocalServer(tiny_dir, seed=0)
    expected = [alone.generate_tokens(p, sp) for p, sp in zip(prompts, seeded, strict=True)]

    def batched(order, params):
        server = LocalServer(tiny_dir, seed=0, max_batch=8)

        async def go():
            return await asyncio.gather(
                *(server.generate(f"r{i}", prompt_ids=prompts[i], sampling_params=params[i]) for i in order)
            )

        out = asyncio.run(go())
        assert server._batcher.batches == [4]
        return {i: o for i, o in zip(order, out, strict=True)}

    forward, backward = batched([0, 1, 2, 3], seeded), batched([3, 2, 1, 0], seeded)
    for i, e in enumerate(expected):
        assert forward[i].token_ids == backward[i].token_ids == e.token_ids
        assert max(abs(a - b) for a, b in zip(forward[i].log_probs, e.log_probs, strict=True)) < 1e-4
    assert len({tuple(e.token_ids) for e in expected}) == 4  # different seeds, different draws
    unseeded = [{k: v for k, v in sp.items() if k != "seed"} for sp in seeded]
    f, b = batched([0, 1, 2, 3], unseeded), batched([3, 2, 1, 0], unseeded)
    assert any(f[i].token_ids != b[i].token_ids for i in range(4))


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(0, 1, 2) == mix_seed(0, 1, 2)
    assert len({mix_seed(0, step, i, j) for step in range(3) for i in range(4) for j in range(4)}) == 48
    assert 0 <= mix_seed(2**40, -1) < 2**31
