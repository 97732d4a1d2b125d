"""The segmented pipeline scheduler on hand-simulated steps (no policy: transcripts are built by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.episode import EpisodeConfig, start
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.transcript import Transcript
from stage1_expert_rl.pipeline import PipelineConfig, PipelineScheduler

CASES = Path(__file__).resolve().parents[2] / "data" / "agentclinic_medqa.jsonl"


@pytest.fixture(scope="module")
def cases():
    return load_cases(CASES)[:6]


def rollout(sched: PipelineScheduler, task) -> Transcript:
    """Stand-in for the policy: continue the carried transcript with one doctor turn of task.stage."""
    if task.transcript is None:
        case = next(c for c in sched_cases(sched) if c.case_id == task.case_id)
        t = start(case, PatientSimulator(), EpisodeConfig())
    else:
        t = Transcript.from_dict(task.transcript)
        t.add("instruction", f"instruction for {task.stage}", task.stage)
    t.add("doctor", f"{task.case_id} answers {task.stage}", task.stage)
    return t


def sched_cases(sched):
    from m3.clinic.cases import ClinicalCase

    return [ClinicalCase.from_dict(d) for d in sched.cases.values()]


def run_step(sched, batch_size, score=lambda task: 1.0):
    batch = sched.next_batch(batch_size)
    for task in batch:
        sched.report(task, rollout(sched, task), score(task))
    return batch


def test_step_four_is_the_papers_pattern(cases):
    sched = PipelineScheduler(PipelineConfig(gate_tau=0.5))
    sched.add_cases(cases[:4])
    ids = [c.case_id for c in cases[:4]]
    steps = [[(t.stage, t.case_id) for t in run_step(sched, 4)] for _ in range(4)]
    assert steps[0] == [("inquiry", ids[0])]
    assert steps[1] == [("ddx", ids[0]), ("inquiry", ids[1])]
    assert steps[3] == [("diagnosis", ids[0]), ("lab", ids[1]), ("ddx", ids[2]), ("inquiry", ids[3])]
    m = sched.metrics()
    assert m["pipeline/finished"] == 1 and m["pipeline/inquiry/pass_rate"] == 1.0
    # the pipeline drains: leftover slots go to the in-flight cases
    assert [t.stage for t in run_step(sched, 4)] == ["diagnosis", "lab", "ddx"]


def test_failing_gate_stops_a_case_and_pass_rates(cases):
    sched = PipelineScheduler(PipelineConfig(gate_tau=0.5, stage_tau={"ddx": 0.9}))
    sched.add_cases(cases[:4])
    bad = cases[1].case_id
    for _ in range(8):
        run_step(sched, 4, score=lambda t: 0.2 if t.case_id == bad and t.stage == "inquiry" else 0.8)
    m = sched.metrics()
    assert sorted(sched.stopped) == sorted(c.case_id for c in cases[:4])  # bad at inquiry, others at DDX
    assert m["pipeline/inquiry/reported"] == 4 and m["pipeline/inquiry/pass_rate"] == 0.75
    assert m["pipeline/inquiry/mean_score"] == pytest.approx((0.2 + 3 * 0.8) / 4)
    # tau_ddx = 0.9 > 0.8: every case that reached DDX stops there
    assert m["pipeline/ddx/reported"] == 3 and m["pipeline/ddx/pass_rate"] == 0.0
    assert m["pipeline/lab/reported"] == 0 and m["pipeline/finished"] == 0
    assert all(m[f"pipeline/{s}/pool"] == 0 for s in ("inquiry", "ddx", "lab", "diagnosis"))


def test_context_is_carried_into_the_next_stage(cases):
    sched = PipelineScheduler()
    sched.add_cases(cases[:1])
    (task,) = sched.next_batch(4)
    t1 = rollout(sched, task)
    sched.report(task, t1, 1.0)
    (ddx,) = sched.next_batch(4)
    assert ddx.stage == "ddx"
    carried = Transcript.from_dict(ddx.transcript)
    assert [(x.role, x.text) for x in carried.turns] == [(x.role, x.text) for x in t1.turns]
    (row,) = sched.to_rows([ddx])
    assert row["extra_info"]["stages"] == ["ddx"] and row["agent_name"] == "m3_consultation"
    assert row["extra_info"]["transcript"] == ddx.transcript
    assert row["prompt"][: len(t1.doctor_messages())] == t1.doctor_messages()
    # the agent loop accepts the row: the transcript reached exactly the stages before "ddx"
    from m3.rl.agent_loop import EpisodeSpec

    spec = EpisodeSpec.from_extra_info(row["extra_info"])
    assert spec.stages == ("ddx",) and spec.prior is not None


def test_report_rejects_wrong_transcripts_and_unknown_tasks(cases):
    sched = PipelineScheduler()
    sched.add_cases(cases[:2])
    batch = sched.next_batch(8)
    assert len(batch) == 2  # the inquiry quota of a batch of 8 is 2 new cases
    a = batch[0]
    with pytest.raises(ValueError, match="must be case"):
        sched.report(a, Transcript(case_id="other"), 1.0)
    sched.report(a, rollout(sched, a), 1.0)
    with pytest.raises(ValueError, match="not in flight"):
        sched.report(a, rollout(sched, a), 1.0)
    with pytest.raises(ValueError, match="unknown stages"):
        PipelineConfig(stage_tau={"triage": 0.1})


def test_fill_idle_slots_admits_more_new_cases(cases):
    sched = PipelineScheduler(PipelineConfig(fill_idle_slots=True))
    sched.add_cases(cases[:6])
    assert [t.stage for t in sched.next_batch(4)] == ["inquiry"] * 4


def test_report_group_carries_the_best_rollout(cases):
    sched = PipelineScheduler()
    sched.add_cases(cases[:1])
    (task,) = sched.next_batch(4)
    good, poor = rollout(sched, task), rollout(sched, task)
    good.turns[-1].text = "the best one"
    assert sched.report_group(task, [(poor, 0.6), (good, 0.9)])
    (ddx,) = sched.next_batch(4)
    assert ddx.transcript["turns"][-1]["text"] == "the best one"


def test_state_round_trip_resumes_with_in_flight_tasks_requeued(cases):
    sched = PipelineScheduler(PipelineConfig(gate_tau=0.4))
    sched.add_cases(cases[:4])
    for _ in range(2):
        run_step(sched, 4)
    lost = sched.next_batch(4)  # a crash before these are reported
    state = json.loads(json.dumps(sched.state_dict()))
    other = PipelineScheduler()
    other.load_state_dict(state)
    assert other.cfg.gate_tau == 0.4 and other.metrics()["pipeline/step"] == 3
    again = other.next_batch(4)
    assert [(t.case_id, t.stage, t.transcript) for t in again] == [
        (t.case_id, t.stage, t.transcript) for t in lost
    ]
    for t in again:
        other.report(t, rollout(other, t), 1.0)
    assert other.metrics()["pipeline/inquiry/reported"] == 3
