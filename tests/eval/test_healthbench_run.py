"""HealthBench end to end: generate -> grade -> score over real HTTP (fake endpoint with faults),
with the offline judge on the tiny model, resumption after failures, and MLflow logging."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from eval.healthbench import run
from eval.healthbench.scoring import score_graded
from m3 import registry
from m3.config import compose
from m3.data.healthbench import GradedExample, load_examples
from tests.fakes.openai_server import FakeOpenAIServer, Fault, json_answer

DATA = Path(__file__).resolve().parents[2] / "data" / "healthbench_sample30.jsonl"
ANSWER = "Please see a doctor today; if symptoms worsen, call emergency services."


def rule(criterion: str) -> bool:
    """The scripted grader's verdict: deterministic and varied across items."""
    return sum(map(ord, criterion)) % 3 != 0


def responder(request: dict) -> str:
    """A scripted grader for simple-evals' GRADER_TEMPLATE (the evaluation's default); else the answer."""
    last = request["messages"][-1]["content"]
    if last.startswith("Your job is to look at a conversation and a rubric item"):
        item = re.search(r"# Rubric item\n\[-?\d+(?:\.\d+)?\] (.*?)\n\n# Instructions", last, re.S)
        return json_answer(explanation="scripted", criteria_met=rule(item.group(1)))
    return ANSWER


def expected_metrics() -> dict:
    graded = [GradedExample(e, ANSWER, [rule(r.criterion) for r in e.rubrics]) for e in load_examples(DATA)]
    return score_graded(graded)


def endpoint_cfg(srv, tmp_path, *extra):
    return compose(
        "eval/healthbench",
        [
            f"endpoint={srv.base_url}",
            "endpoint_model=fake-model",
            f"data={DATA}",
            f"out_dir={tmp_path / 'hb'}",
            "judge.backend=openai",
            "judge.model=fake-model",
            f"judge.base_url={srv.base_url}",
            f"judge.cache_path={tmp_path / 'judge.sqlite'}",
            "judge.timeout_s=1",
            "judge.max_retries=2",
            "judge.json_retries=1",
            "judge.backoff_base_s=0.01",
            *extra,
        ],
    )


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123")


def test_grade_then_score_over_http_with_faults(mlflow_store, tmp_path, fast_backoff):
    faults = [Fault.http(500), Fault.hang(5), Fault.bad_json(), Fault.rate_limit(0.01), Fault.wrong_key()] * 3
    with FakeOpenAIServer(responder, faults=[None] * 30 + faults) as srv:
        summary = run.main(endpoint_cfg(srv, tmp_path))
        n_items = sum(len(e.rubrics) for e in load_examples(DATA))
        assert srv.request_count >= 30 + n_items  # every completion and every item, plus retries
    metrics = json.loads((tmp_path / "hb" / "metrics.json").read_text())
    assert metrics == expected_metrics()  # the whole path equals scoring the scripted verdicts
    assert summary["n_graded"] == 30 and summary["n_failed_examples"] == 0
    assert summary["backend"] == "openai:fake-model, grader template: simple-evals"
    assert summary["grader_template"] == "simple-evals"
    assert (tmp_path / "hb" / "scores.png").stat().st_size > 10_000
    # the logged run carries the metrics and the judge backend, never the key
    runs = mlflow.search_runs(experiment_names=["m3"], output_format="list")
    assert runs[0].data.metrics["overall_score"] == pytest.approx(metrics["overall_score"])
    assert runs[0].data.tags["m3.judge"] == "openai:fake-model"
    assert runs[0].data.tags["m3.grader_template"] == "simple-evals"
    assert "not-a-real-key" not in json.dumps(runs[0].data.params)

    # re-running the same command grades nothing twice and calls nothing at all
    with FakeOpenAIServer(responder) as srv2:
        cfg = endpoint_cfg(srv2, tmp_path)
        run.main(cfg)
        assert srv2.request_count == 0


def test_failed_examples_are_retried_not_lost(mlflow_store, tmp_path, fast_backoff):
    # every grader request fails for the first run (after the 30 completions): nothing is graded,
    # the run says so and keeps the failures; the completions are kept
    always_500 = [None] * 30 + [Fault.http(500)] * 2000
    with FakeOpenAIServer(responder, faults=always_500) as srv, pytest.raises(RuntimeError, match="re-run"):
        run.main(endpoint_cfg(srv, tmp_path))
    failures = (tmp_path / "hb" / "failures.jsonl").read_text().splitlines()
    assert failures and "500" in json.loads(failures[0])["error"]
    assert len((tmp_path / "hb" / "completions.jsonl").read_text().splitlines()) == 30
    # a crash mid-write leaves a torn line: it is dropped and its example redone
    with open(tmp_path / "hb" / "graded.jsonl", "a") as f:
        f.write('{"prompt_id": "torn')
    with FakeOpenAIServer(responder) as srv:
        summary = run.main(endpoint_cfg(srv, tmp_path))
        n_items = sum(len(e.rubrics) for e in load_examples(DATA))
        assert srv.request_count == n_items  # each item graded once; completions were kept
    assert summary["n_graded"] == 30 and summary["n_failed_examples"] == 0
    assert json.loads((tmp_path / "hb" / "metrics.json").read_text()) == expected_metrics()


def test_offline_judge_on_tiny_model(mlflow_store, tiny_dir, tmp_path):
    registry.publish(tiny_dir, "m3-base", stage="base")
    cfg = compose(
        "eval/healthbench",
        [
            f"data={DATA}",
            "n_examples=4",
            "generation.max_new_tokens=8",
            f"out_dir={tmp_path / 'hb'}",
            f"summary_out={tmp_path / 'summary.json'}",
        ],
    )
    summary = run.main(cfg)
    assert summary["backend"].startswith("offline") and summary["n_graded"] == 4
    assert summary["model"] == "models:/m3-base/1"
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    metrics = json.loads((tmp_path / "hb" / "metrics.json").read_text())
    assert 0.0 <= metrics["overall_score"] <= 1.0 and metrics["overall_score:n_samples"] == 4
    # the evaluated model version links to the eval run
    mv = registry.get_version("models:/m3-base@candidate")
    link = json.loads(mv.tags["m3.eval.healthbench"])
    assert link["overall_score"] == summary["value"] and summary["backend"].startswith(link["judge"])
