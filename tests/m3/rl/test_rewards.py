"""m3.rl.rewards: every route on hand-built inputs, and the whole path through verl's reward loop
(`load_reward_manager` -> registered "naive" manager -> `run_single` on a real DataProto row)."""

from __future__ import annotations

import asyncio
import math
import os

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.transcript import Transcript
from m3.clinic.verifiers import stage_scores
from m3.config import REPO_ROOT
from m3.judges.base import ItemVerdict
from m3.judges.rubric import RubricVerifier
from m3.rl import rewards

DATA = REPO_ROOT / "data" / "agentclinic_medqa.jsonl"
# case 0 (myasthenia gravis), as in tests/m3/clinic/test_verifiers.py:
# inquiry: h2 (2) + h3 (2) + h8 (1) of 14 = 5/14; ddx correct at rank 1 = 1.0;
# lab: P = 2/3, R_w = 3/5, F1 = 2PR/(P+R) = 12/19; diagnosis botulism: off-branch -0.2
G_INQ, G_LAB = 5 / 14, 12 / 19
LABS = "1. Acetylcholine receptor antibodies\n2. Chest CT\n3. Complete blood count"


@pytest.fixture(scope="module")
def case():
    return load_cases(DATA)[0]


def consultation(final: str | None = "Final diagnosis: Botulism") -> Transcript:
    t = Transcript("agentclinic_medqa-0000")
    t.add(
        "instruction",
        "Stage 1 ... The patient says: 'I have double vision.'",
        "inquiry",
        meta={"facts": ["h1"]},
    )
    t.add("doctor", "<think>ask about onset</think>When did it start?", "inquiry")
    t.add("patient", "A month ago.", "inquiry", meta={"facts": ["h2"]})
    t.add("doctor", "Is it worse after activity?", "inquiry")
    t.add("patient", "Yes, better after rest.", "inquiry", meta={"facts": ["h3", "h8"]})
    t.add("doctor", "[END INQUIRY]", "inquiry")
    stages = [("ddx", "1. Myasthenia gravis"), ("lab", LABS)] + ([("diagnosis", final)] if final else [])
    for stage, text in stages:
        t.add("instruction", f"Stage {stage}", stage)
        t.add("doctor", text, stage)
    return t


def inquiry_info(case, t: Transcript, /, **extra) -> dict:
    """What the reward function sees: the row's extra_info merged with the agent loop's extra_fields."""
    return {
        "transcript": t.to_dict(),
        "stage_scores": stage_scores(case, t),
        "step_gammas": [1.0, 0.1, 1.0, 1.0, 1.0],
        "step_violations": [[], [{"kind": "repeated_question"}], [], [], []],
        "case_id": t.case_id,
        **extra,
    }


def run(coro):
    return asyncio.run(coro)


# --- m3_inquiry --------------------------------------------------------------------------------
STAGE_WEIGHTED = {"r_global": "stage_weighted"}  # the earlier proxy, kept as an option


def test_inquiry_case_rubric_is_the_default_and_penalises_off_branch(case):
    """R_global = eq. 1 over the case's clinical rubric (tests/m3/clinic/test_rubric.py by hand):
    Botulism is off-branch of myasthenia gravis, a NEGATIVE item, so the penalty reaches RL."""
    info = inquiry_info(case, consultation(), case=case.to_dict())
    out = run(rewards.compute_score("m3_inquiry", "", None, info))
    # met: h2 5, h3 5, h8 2, red flag 3, ddx 5, antibodies 5 + CT 1, off-branch -5; sum |w| = 75
    assert out["score"] == pytest.approx((21 + 13) / 75) and out["r_task"] == pytest.approx(out["score"])
    right = run(rewards.compute_score(
        "m3_inquiry", "", None, inquiry_info(case, consultation("Final diagnosis: Myasthenia gravis"), case=case.to_dict())
    ))  # fmt: skip
    assert right["score"] == pytest.approx(49 / 75) and right["score"] > out["score"]
    old = run(rewards.compute_score("m3_inquiry", "", None, info, inquiry=STAGE_WEIGHTED))
    assert old["score"] == pytest.approx(0.4 * G_INQ + 0.15 + 0.15 * G_LAB)  # clipped: no off-branch signal
    with pytest.raises(ValueError, match="needs extra_info\\['case'\\]"):
        run(rewards.compute_score("m3_inquiry", "", None, inquiry_info(case, consultation())))


def test_inquiry_weighted_stages_diagnosis_clipped(case):
    out = run(
        rewards.compute_score(
            "m3_inquiry",
            "ignored token text",
            None,
            inquiry_info(case, consultation()),
            inquiry=STAGE_WEIGHTED,
        )
    )
    # 0.4*5/14 + 0.15*1 + 0.15*12/19 + 0.3*max(-0.2, 0) over weights summing to 1
    expected = 0.4 * G_INQ + 0.15 + 0.15 * G_LAB
    assert out["score"] == pytest.approx(expected) and out["r_stages"] == pytest.approx(expected)
    assert out["g_inquiry"] == pytest.approx(G_INQ) and out["g_diagnosis"] == pytest.approx(
        -0.2
    )  # raw G_k logged
    assert math.isnan(out["r_task"])
    assert out["n_steps"] == 5 and out["violation_rate"] == pytest.approx(1 / 5)


def test_inquiry_missing_stage_counts_zero_and_row_stages_renormalise(case):
    cut = run(
        rewards.compute_score(
            "m3_inquiry", "", None, inquiry_info(case, consultation(final=None)), inquiry=STAGE_WEIGHTED
        )
    )
    assert cut["score"] == pytest.approx(0.4 * G_INQ + 0.15 + 0.15 * G_LAB) and math.isnan(cut["g_diagnosis"])
    # a SPAR segment row that runs DDX and Lab only: weights 0.15 + 0.15, the inquiry score is ignored
    seg = run(
        rewards.compute_score(
            "m3_inquiry",
            "",
            None,
            inquiry_info(case, consultation(), stages=["ddx", "lab"]),
            inquiry=STAGE_WEIGHTED,
        )
    )
    assert seg["score"] == pytest.approx((0.15 + 0.15 * G_LAB) / 0.3)
    # weights from reward_kwargs; without stage_scores they are recomputed from the case
    info = inquiry_info(case, consultation(), case=case.to_dict())
    del info["stage_scores"]
    w = {"inquiry": 1.0, "ddx": 0.0, "lab": 0.0, "diagnosis": 0.0}
    out = run(
        rewards.compute_score("m3_inquiry", "", None, info, inquiry={"stage_weights": w, **STAGE_WEIGHTED})
    )
    assert out["score"] == pytest.approx(G_INQ)


class FixedJudge:
    """Meets the items whose criterion starts with "MET"; records what it was asked to grade."""

    name = "fixed"

    def __init__(self):
        self.calls = []

    async def grade_items(self, conversation, response, items):
        self.calls.append((conversation, response))
        return [ItemVerdict(it.criterion.startswith("MET")) for it in items]

    async def aclose(self):
        pass


def test_inquiry_mixes_rubric_r_task(case, monkeypatch):
    from m3.facts import reward as facts_reward

    judge = FixedJudge()
    monkeypatch.setattr(facts_reward, "_VERIFIER", RubricVerifier(judge))
    rubrics = [
        {"criterion": "MET asks about fatigability", "points": 5},
        {"criterion": "orders a tensilon test", "points": 3},
        {"criterion": "prescribes antibiotics", "points": -2},
    ]
    out = run(
        rewards.compute_score(
            "m3_inquiry",
            "",
            None,
            inquiry_info(case, consultation(), rubrics=rubrics),
            inquiry=STAGE_WEIGHTED,
        )
    )
    # eq. 1: (5 + 2) / (5 + 3 + 2) = 0.7; R_global = 0.5 R_stages + 0.5 R_task
    r_stages = 0.4 * G_INQ + 0.15 + 0.15 * G_LAB
    assert out["r_task"] == pytest.approx(0.7) and out["score"] == pytest.approx(0.5 * r_stages + 0.35)
    conversation, response = judge.calls[0]
    assert conversation == [
        {"role": "user", "content": "Stage 1 ... The patient says: 'I have double vision.'"}
    ]
    assert response.startswith("[inquiry] When did it start?") and "<think>" not in response
    assert "[diagnosis] Final diagnosis: Botulism" in response and "A month ago" not in response


def test_inquiry_errors(case):
    with pytest.raises(ValueError, match="m3_consultation"):
        run(rewards.compute_score("m3_inquiry", "", None, {}))
    with pytest.raises(ValueError, match="unknown keys"):
        run(
            rewards.compute_score(
                "m3_inquiry", "", None, inquiry_info(case, consultation()), inquiry={"w": 1}
            )
        )
    with pytest.raises(ValueError, match="exactly the keys"):
        rewards.InquiryRewardConfig(stage_weights={"inquiry": 1.0})


# --- m3_healthcare / healthbench ---------------------------------------------------------------
def test_healthcare_delegates_to_fact_reward_after_think(monkeypatch, tmp_path):
    from m3.facts import reward as facts_reward
    from m3.facts.reward import FactAwareReward, FactRewardConfig

    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(
        facts_reward, "_REWARD", FactAwareReward(FactRewardConfig(guideline_ids=["acc_aha_af_2023"]))
    )
    answer = (
        "Anticoagulation is recommended for men with a CHA2DS2-VASc score of 2 or more. "
        "Aspirin is the preferred stroke prevention in atrial fibrillation."
    )
    info = {
        "prompt": [{"role": "user", "content": "Should I take a blood thinner for atrial fibrillation?"}],
        "rubrics": [
            {
                "criterion": "Recommends anticoagulation when the CHA2DS2-VASc score is 2 or more.",
                "points": 8,
            },
            {"criterion": "Recommends aspirin for stroke prevention in atrial fibrillation.", "points": -5},
        ],
    }
    direct = run(facts_reward.compute_score("healthbench", answer, None, info))
    for source in ("m3_healthcare", "healthbench"):
        out = run(rewards.compute_score(source, f"<think>Aspirin? No.</think>\n{answer}", None, info))
        assert out == pytest.approx(direct)
    assert out["score"] == pytest.approx(out["r_task"] + out["gate"] * out["r_fact"]) and out["n_claims"] == 2


# --- m3_general --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "constraint, good, bad",
    [
        ({"type": "max_words", "value": 3}, "one two three", "one two three four"),
        ({"type": "min_words", "value": 3}, "one two three", "one two"),
        (
            {"type": "include_keywords", "value": ["Sepsis", "fluids"]},
            "sepsis needs fluids",
            "sepsis needs care",
        ),
        ({"type": "exclude_keywords", "value": ["aspirin"]}, "take warfarin", "take Aspirin."),
        ({"type": "num_bullets", "value": 2}, "Plan:\n- rest\n* fluids", "- rest\n- fluids\n- sleep"),
        ({"type": "num_paragraphs", "value": 2}, "first\npart\n\nsecond", "only one\nparagraph"),
        ({"type": "json_format"}, '```json\n{"a": 1}\n```', "{'a': 1}"),
        ({"type": "lowercase"}, "all lower case", "Not lower"),
        ({"type": "uppercase"}, "ALL CAPS", "Not caps"),
        ({"type": "starts_with", "value": "Dear"}, "  Dear doctor", "Hello"),
        ({"type": "ends_with", "value": "Any questions?"}, "Done. Any questions?\n", "Done."),
        ({"type": "no_commas"}, "no commas here", "one, two"),
    ],
)
def test_each_constraint_true_and_false(constraint, good, bad):
    assert rewards.check_constraint(good, constraint) is True
    assert rewards.check_constraint(bad, constraint) is False


def test_general_fraction_answer_and_mean():
    cons = [
        {"type": "lowercase"},
        {"type": "max_words", "value": 4},
        {"type": "include_keywords", "value": ["x"]},
    ]
    out = run(
        rewards.compute_score(
            "m3_general", "<think>LONG Reasoning</think>the answer is 7", None, {"constraints": cons}
        )
    )
    assert (
        out["score"] == pytest.approx(2 / 3)
        and out["n_constraints"] == 3
        and math.isnan(out["answer_correct"])
    )
    # exact answer: last \boxed{} (braces balanced), else after "Answer:"; normalised
    assert (
        run(rewards.compute_score("m3_general", r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}", {}))["score"]
        == 1.0
    )
    assert run(rewards.compute_score("m3_general", "Answer: $1,000.0$.", "1000", {}))["score"] == 1.0
    assert run(rewards.compute_score("m3_general", "Answer: **B**", "b", {}))["score"] == 1.0
    assert run(rewards.compute_score("m3_general", "Answer: 12", "13", {}))["score"] == 0.0
    assert run(rewards.compute_score("m3_general", "<think>Answer: 13", "13", {}))["score"] == 0.0  # unclosed
    both = run(
        rewards.compute_score("m3_general", "Answer: 13", "13", {"constraints": [{"type": "uppercase"}]})
    )
    assert both["score"] == 0.5 and both["instruction_following"] == 0.0 and both["answer_correct"] == 1.0


def test_general_and_routing_errors():
    with pytest.raises(ValueError, match="unknown constraint type 'haiku'"):
        run(rewards.compute_score("m3_general", "x", None, {"constraints": [{"type": "haiku"}]}))
    with pytest.raises(ValueError, match="needs a 'value'"):
        rewards.check_constraint("x", {"type": "max_words"})
    with pytest.raises(ValueError, match="neither"):
        run(rewards.compute_score("m3_general", "x", "", {}))
    with pytest.raises(ValueError, match="m3_inquiry"):
        run(rewards.compute_score("gsm8k", "x", "1", {}))


# --- through verl's reward loop ----------------------------------------------------------------
def test_through_verl_naive_reward_manager():
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import load_reward_manager

    from m3.model.tokenizer import build_qwen3_tokenizer

    tok = build_qwen3_tokenizer()
    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://m3.rl.rewards",
                    "name": "compute_score",
                    "reward_kwargs": {},
                },
                "reward_manager": {"source": "register", "name": "naive"},
            }
        }
    )
    chat = [{"role": "user", "content": "What is 6 times 7? Answer in lowercase."}]
    prompt = tok.encode(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))
    response = tok.encode("<think>6*7=42</think>\n\nthe answer is \\boxed{42}.") + [
        tok.convert_tokens_to_ids("<|im_end|>")
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    resp_len = len(response) + 4  # right padding past the valid response, masked out
    responses = torch.tensor([response + [pad] * 4])
    attention = torch.tensor([[1] * len(prompt) + [1] * len(response) + [0] * 4])
    data = DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([prompt]),
            "responses": responses,
            "input_ids": torch.cat([torch.tensor([prompt]), responses], dim=1),
            "attention_mask": attention,
        },
        non_tensors={
            "data_source": np.array(["m3_general"], dtype=object),
            "reward_model": np.array([{"ground_truth": "42", "style": "rule"}], dtype=object),
            "extra_info": np.array(
                [{"constraints": [{"type": "lowercase"}, {"type": "json_format"}]}], dtype=object
            ),
        },
    )
    assert responses.shape[1] == resp_len

    async def go():
        manager = load_reward_manager(config, tok)  # inside the loop: the manager binds the running loop
        assert isinstance(manager, NaiveRewardManager) and manager.is_async_reward_score
        return await manager.run_single(data)

    out = asyncio.run(go())
    # lowercase met, json not: 1/2; answer 42 correct: 1 -> mean 0.75
    assert out["reward_score"] == pytest.approx(0.75)
    info = out["reward_extra_info"]
    assert (
        info["instruction_following"] == 0.5 and info["answer_correct"] == 1.0 and info["n_constraints"] == 2
    )
