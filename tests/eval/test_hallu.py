"""HealthBench-Hallu end to end over a scripted endpoint, offline verification without cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.hallu import run
from eval.hallu.run import aggregate
from m3.config import compose
from tests.fakes.openai_server import FakeOpenAIServer

DATA = Path(__file__).resolve().parents[2] / "data" / "healthbench_sample30.jsonl"
ANSWER = (
    "Anticoagulation is recommended for men with a CHA2DS2-VASc score of 2 or more. "
    "Aspirin is the preferred stroke prevention in atrial fibrillation."
)


def test_aggregate_by_hand():
    rows = [
        {"prompt_id": "a", "claims": [{"label": "Supported"}, {"label": "Refuted"}]},
        {"prompt_id": "b", "claims": [{"label": "Uncertain"}, {"label": "Supported"}]},
        {"prompt_id": "c", "claims": []},
    ]
    m = aggregate(rows)
    # micro: (1 + 0.5) / 4; macro over responses with claims: (0.5 + 0.25) / 2
    assert m["hallucination_rate"] == pytest.approx(1.5 / 4)
    assert m["hallucination_rate_per_response"] == pytest.approx(0.375)
    assert m["n_claims"] == 4 and m["n_responses_without_claims"] == 1


def test_hallu_run_against_endpoint(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path / "cache"))
    with FakeOpenAIServer(lambda req: ANSWER) as srv:
        cfg = compose(
            "eval/hallu",
            [
                f"endpoint={srv.base_url}",
                "endpoint_model=fake-model",
                f"data={DATA}",
                "n_examples=3",
                f"out_dir={tmp_path / 'h'}",
                "facts.guideline_ids=[acc_aha_af_2023]",
            ],
        )
        summary = run.main(cfg)
    rows = [json.loads(x) for x in (tmp_path / "h" / "claims.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["claims"]) == 2 for r in rows)
    first = rows[0]["claims"][0]
    assert first["label"] == "Supported" and first["evidence"] and first["evidence"][0]["text"]
    assert all(c["cached"] == "" for r in rows for c in r["claims"])  # verified without cache
    assert (
        summary["value"] == pytest.approx(aggregate(rows)["hallucination_rate"]) and summary["n_claims"] == 6
    )
    assert 0 < summary["value"] <= 0.5  # the aspirin claim is flagged in every answer
