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


def _consultation():
    from m3.clinic.transcript import Transcript

    t = Transcript("c1", "You are a doctor.")
    t.add("instruction", "Stage 1 - Inquiry. Patient: I see double.", "inquiry")
    t.add("doctor", "When did it start?", "inquiry")
    t.add("patient", "Two months ago.", "inquiry")
    t.add("interrupt", "Is it cancer, doctor?", "inquiry")
    t.add("doctor", "It is unlikely; does it get worse in the evening?", "inquiry")
    t.add("patient", "Yes, much worse.", "inquiry")
    t.add("instruction", "Stage 2 - DDX.", "ddx")
    t.add("doctor", "1. Myasthenia gravis", "ddx")
    return t


def test_process_dimensions_grade_the_whole_inquiry():
    import asyncio

    seen = []

    class RecordingJudge:
        async def grade_items(self, conversation, response, items):
            from m3.judges.base import ItemVerdict

            seen.append((conversation, response))
            return [ItemVerdict(True) for _ in items]

    scores = asyncio.run(run.process_scores(RecordingJudge(), _consultation()))
    assert scores == dict.fromkeys(run.PROCESS_ITEMS, 1.0)
    conversation, graded = seen[0]
    assert conversation == [
        {"role": "system", "content": "You are a doctor."},
        {"role": "user", "content": "Stage 1 - Inquiry. Patient: I see double."},
    ]
    assert graded == (
        "Doctor: When did it start?\nPatient: Two months ago.\nPatient: Is it cancer, doctor?\n"
        "Doctor: It is unlikely; does it get worse in the evening?\nPatient: Yes, much worse."
    )  # every doctor turn of the inquiry with the answers; nothing of the later stages


def test_inquiry_station_combines_coverage_and_process_by_hand():
    process = {"safety_stratification": 1.0, "clarity": 1.0, "association": 0.0, "normative_output": 0.0}
    assert run.inquiry_station(0.6, process, 0.7) == pytest.approx(0.7 * 0.6 + 0.3 * 0.5)
    assert run.inquiry_station(0.6, process, 1.0) == pytest.approx(0.6)  # coverage only


def test_concurrent_cases_give_the_same_stations(mlflow_store, tmp_path, monkeypatch):
    """concurrent_cases > 1 runs consultations together (a batching engine serves them); each case's
    result is the same as one at a time, and the file stays one line per case."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-osce-123456")
    with FakeOpenAIServer(doctor) as srv:
        one = run.main(cfg_for(srv, tmp_path / "one"))
        cfg = cfg_for(srv, tmp_path / "two")
        cfg.concurrent_cases = 2
        two = run.main(cfg)
    assert one["metrics"] == two["metrics"]
    rows = [json.loads(x) for x in (tmp_path / "two" / "osce" / "cases.jsonl").read_text().splitlines()]
    assert sorted(r["case_id"] for r in rows) == ["agentclinic_medqa-0000", "agentclinic_medqa-0001"]
