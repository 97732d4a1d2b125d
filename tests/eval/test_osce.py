"""OSCE evaluation end to end against a scripted OpenAI-compatible doctor; resumable; logged."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from eval.osce import run
from m3.config import compose
from tests.fakes.openai_server import FakeOpenAIServer

DATA = Path(__file__).resolve().parents[2] / "data" / "agentclinic_medqa.jsonl"


def doctor(request: dict) -> str:
    """A competent doctor for case 0 (myasthenia gravis), whatever the case."""
    last = request["messages"][-1]["content"]
    if "Stage 2 -" in last:
        return "1. Myasthenia gravis\n2. Botulism"
    if "Stage 3 -" in last:
        return "1. Acetylcholine receptor antibodies\n2. Electromyography"
    if "Stage 4 -" in last:
        return "Final diagnosis: Myasthenia gravis"
    asked = sum(m["role"] == "assistant" for m in request["messages"])
    questions = ["When did it start?", "Does it get worse with activity?", "Do you smoke?"]
    return questions[asked] if asked < len(questions) else "[END INQUIRY]"


def cfg_for(srv, tmp_path):
    return compose(
        "eval/osce",
        [
            f"endpoint={srv.base_url}",
            "endpoint_model=fake-model",
            f"cases={DATA}",
            "n_cases=2",
            f"out_dir={tmp_path / 'osce'}",
            f"summary_out={tmp_path / 'summary.json'}",
        ],
    )


def test_osce_stations_resume_and_log(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-osce-123456")
    with FakeOpenAIServer(doctor) as srv:
        summary = run.main(cfg_for(srv, tmp_path))
        assert srv.request_count > 0
    rows = [json.loads(x) for x in (tmp_path / "osce" / "cases.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in rows] == ["agentclinic_medqa-0000", "agentclinic_medqa-0001"]
    first = rows[0]
    assert first["stations"]["diagnosis"] == 1.0 and first["ddx"] == 1.0 and first["stations"]["lab"] > 0.8
    assert 0 < first["stations"]["inquiry"] < 1 and set(first["process"]) == set(run.PROCESS_ITEMS)
    assert first["transcript"]["turns"][0]["role"] == "instruction"
    m = summary["metrics"]
    assert m["station_diagnosis"] == pytest.approx(100 * sum(r["stations"]["diagnosis"] for r in rows) / 2)
    assert (tmp_path / "osce" / "stations.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text())["value"] == summary["value"]
    logged = mlflow.search_runs(experiment_names=["m3"], output_format="list")[0]
    assert logged.data.tags["m3.eval"] == "osce" and "station_inquiry" in logged.data.metrics
    # resume: finished cases are not run again
    with FakeOpenAIServer(doctor) as srv2:
        again = run.main(cfg_for(srv2, tmp_path))
        assert srv2.request_count == 0
    assert again["value"] == summary["value"]


def test_aggregate_by_hand():
    rows = [
        {
            "stations": {"inquiry": 0.5, "lab": 1.0, "diagnosis": 1.0},
            "ddx": 1.0,
            "n_steps": 4,
            "process": dict.fromkeys(run.PROCESS_ITEMS, 1.0),
            "violations": {"repeated_question": 1},
        },
        {
            "stations": {"inquiry": 0.25, "lab": 0.0, "diagnosis": -0.2},
            "ddx": 0.5,
            "n_steps": 4,
            "process": dict.fromkeys(run.PROCESS_ITEMS, 0.0),
            "violations": {},
        },
    ]
    m = run.aggregate(rows)
    assert m["station_inquiry"] == pytest.approx(37.5) and m["station_diagnosis"] == pytest.approx(40.0)
    assert m["ddx"] == pytest.approx(75.0) and m["violation_rate_repeated_question"] == pytest.approx(1 / 8)
