"""Fact-Aware reward end to end (offline): claims -> cached verification -> R_fact -> gated R;
the verl `compute_score` entry point and the HTTP service."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from m3.facts import reward as reward_mod
from m3.facts.reward import FactAwareReward, FactRewardConfig
from m3.facts.reward_math import dynamic_gate, fact_reward
from m3.facts.service import build_app, serve

RESPONSE = (
    "Anticoagulation is recommended for men with a CHA2DS2-VASc score of 2 or more. "
    "Sepsis is defined as life-threatening organ dysfunction caused by a dysregulated host response to infection. "
    "Aspirin is the preferred stroke prevention in atrial fibrillation."
)


@pytest.fixture(scope="module")
def fact_reward_obj(tmp_path_factory):
    import os

    os.environ.setdefault("M3_CACHE_DIR", str(tmp_path_factory.mktemp("m3cache")))
    return FactAwareReward(FactRewardConfig(guideline_ids=["acc_aha_af_2023", "sepsis3_2016"]))


def test_score_combines_task_and_fact_and_caches(fact_reward_obj):
    s = asyncio.run(fact_reward_obj.score(RESPONSE, r_task=0.9))
    assert len(s.claims) == 3 and s.labels[:2] == ["Supported", "Supported"]
    assert s.labels[2] in ("Refuted", "Uncertain")  # aspirin is not the recommended AF stroke prevention
    flagged = [s.verdicts[i].label != "Supported" for i in s.representatives]
    assert s.r_fact == pytest.approx(fact_reward(s.weights, flagged)) and -1 < s.r_fact < 0
    assert s.gate == pytest.approx(dynamic_gate(0.9))
    assert s.reward == pytest.approx(0.9 + s.gate * s.r_fact)
    before = fact_reward_obj.cache.stats()
    again = asyncio.run(fact_reward_obj.score(RESPONSE, r_task=0.9))
    assert [v.cached for v in again.verdicts] == ["l1"] * 3 and again.reward == pytest.approx(s.reward)
    assert fact_reward_obj.cache.stats()["misses"] == before["misses"]  # no new verification
    # a low task reward closes the gate: factuality barely moves R
    low = asyncio.run(fact_reward_obj.score(RESPONSE, r_task=0.5))
    assert abs(low.reward - 0.5) < 1e-3


def test_no_claims_no_penalty(fact_reward_obj):
    s = asyncio.run(fact_reward_obj.score("Hello! Let me know.", r_task=0.8))
    assert s.claims == [] and s.r_fact == 0.0 and s.reward == 0.8


def test_compute_score_entry_point(fact_reward_obj, monkeypatch):
    monkeypatch.setattr(reward_mod, "_REWARD", fact_reward_obj)
    info = {
        "prompt": [{"role": "user", "content": "What does sepsis mean?"}],
        "rubrics": [
            {
                "criterion": "Explains that sepsis is organ dysfunction caused by a dysregulated response to infection.",
                "points": 8,
                "tags": ["axis:accuracy"],
            },
            {
                "criterion": "Recommends aspirin for stroke prevention in atrial fibrillation.",
                "points": -5,
                "tags": [],
            },
        ],
    }
    out = asyncio.run(reward_mod.compute_score("healthbench", RESPONSE, None, info))
    assert set(out) >= {"score", "r_task", "r_fact", "gate", "n_claims"}
    assert out["score"] == pytest.approx(out["r_task"] + out["gate"] * out["r_fact"])
    with pytest.raises(ValueError, match="rubrics"):
        asyncio.run(reward_mod.compute_score("healthbench", RESPONSE, None, {}))


def test_http_service(fact_reward_obj):
    client = TestClient(build_app(fact_reward_obj))
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/score", json={"response": RESPONSE, "r_task": 0.9}).json()
    assert len(r["claims"]) == 3 and r["reward"] < 0.9
    v = client.post(
        "/verify",
        json={"claims": ["Sepsis is defined as organ dysfunction caused by infection."], "use_cache": False},
    ).json()
    assert (
        v["verdicts"][0]["label"] in ("Supported", "Refuted", "Uncertain")
        and v["verdicts"][0]["cached"] == ""
    )
    locked = TestClient(build_app(fact_reward_obj, api_key="s3cret"))
    assert locked.post("/verify", json={"claims": ["x y z w"]}).status_code == 401
    ok = locked.post("/verify", json={"claims": []}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    with pytest.raises(ValueError, match="M3_FACTS_API_KEY"):
        serve(host="0.0.0.0")
