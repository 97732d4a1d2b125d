"""The four-stage consultation with a scripted doctor and the offline patient simulator."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.episode import (
    DoctorReply,
    EpisodeConfig,
    PatientReply,
    plan_interruptions,
    run_consultation,
    run_inquiry,
    split_turn,
    start,
)
from m3.clinic.patient.config import SimulatorConfig
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.verifiers import stage_scores

DATA = Path(__file__).resolve().parents[3] / "data" / "agentclinic_medqa.jsonl"
SCRIPT = {
    "inquiry": [
        "When did the double vision start?",
        "Do the symptoms change with activity or rest?",
        "Do you smoke or drink alcohol?",
        "[END INQUIRY]",
    ],
    "ddx": "1. Myasthenia gravis\n2. Lambert-Eaton syndrome",
    "lab": "1. Acetylcholine receptor antibodies\n2. Electromyography with repetitive stimulation",
    "diagnosis": "Fatigable weakness with positive antibodies.\nFinal diagnosis: Myasthenia gravis",
}


class ScriptedDoctor:
    def __init__(self):
        self.seen: list[list[dict]] = []
        self.asked = 0

    async def __call__(self, messages):
        self.seen.append(messages)
        last = messages[-1]["content"]
        for stage in ("ddx", "lab", "diagnosis"):
            if f"Stage {('ddx', 'lab', 'diagnosis').index(stage) + 2} -" in last:
                return DoctorReply(SCRIPT[stage])
        self.asked += 1
        return DoctorReply(SCRIPT["inquiry"][self.asked - 1])


@pytest.fixture(scope="module")
def case():
    return load_cases(DATA)[0]


@pytest.fixture(scope="module")
def patient():
    return PatientSimulator(SimulatorConfig())


def test_full_consultation_scores(case, patient):
    doctor = ScriptedDoctor()
    t = asyncio.run(
        run_consultation(case, doctor, patient, EpisodeConfig(interruption_rate=0.0), random.Random(0))
    )
    assert [x.stage for x in t.doctor_turns()] == ["inquiry"] * 4 + ["ddx", "lab", "diagnosis"]
    assert t.ended_by == "doctor" and t.interrupted is None
    # the opening is passed as text, never as an object, and its facts are recorded
    assert "PatientReply" not in t.turns[0].text and t.turns[0].meta["facts"]
    # x_{k+1} = [x_k, y_k, p_{k+1}]: the lab stage sees the whole consultation so far
    lab_view = doctor.seen[5]
    assert any(SCRIPT["ddx"] == m["content"] for m in lab_view) and "Stage 3" in lab_view[-1]["content"]
    # the ordered tests' results are reported to the diagnosis stage, unordered ones are not
    diag_prompt = doctor.seen[6][-1]["content"]
    assert "Present (elevated)" in diag_prompt and "thymoma" not in diag_prompt
    g = stage_scores(case, t)
    assert g["ddx"] == 1.0 and g["diagnosis"] == 1.0 and g["lab"] > 0.8 and 0 < g["inquiry"] < 1
    covered = {f for turn in t.turns if turn.role == "patient" for f in turn.meta["facts"]}
    assert covered <= {f.id for f in case.checklist}


def test_interruption_visible_to_doctor_only(case, patient):
    cfg = EpisodeConfig(max_inquiry_turns=3)
    rng = random.Random(3)
    t = asyncio.run(run_consultation(case, ScriptedDoctor(), patient, cfg, rng, "end_of_turn"))
    snippets = [x for x in t.turns if x.role == "interrupt"]
    assert t.interrupted == "end_of_turn" and len(snippets) == 1 and snippets[0].text.rstrip().endswith("?")
    assert any(snippets[0].text in m["content"] for m in t.doctor_messages())
    assert all(snippets[0].text not in m["content"] for m in t.patient_messages())


def test_episode_config_validation():
    with pytest.raises(ValueError):
        EpisodeConfig(max_inquiry_turns=0)
    with pytest.raises(ValueError):
        EpisodeConfig(interruption_rate=1.5)


def test_plan_over_1000_consultations_is_exact_and_seeded():
    ids = [f"case-{i:04d}" for i in range(1000)]
    plan = plan_interruptions(ids, EpisodeConfig(), seed=7)
    modes = list(plan.values())
    assert modes.count("mid_turn") == 125 and modes.count("end_of_turn") == 125 and modes.count(None) == 750
    assert plan == plan_interruptions(ids, EpisodeConfig(), seed=7)  # seeded
    assert plan != plan_interruptions(ids, EpisodeConfig(), seed=8)
    with pytest.raises(ValueError, match="distinct"):
        plan_interruptions(["a", "a"], EpisodeConfig(), seed=0)


class _Patient:
    """Answers every question with two sentences; the gate ends the dialogue at `gate_at`."""

    def __init__(self, gate_at: int | None):
        self.gate_at, self.n = gate_at, 0

    def opening(self, case):
        return PatientReply("I feel unwell.")

    async def reply(self, case, transcript, question):
        self.n += 1
        return PatientReply("It started two days ago. It is getting worse.", end=self.n == self.gate_at)

    def interruption(self, case, rng):
        return "Sorry, doctor, is it serious?"


def test_every_planned_consultation_is_interrupted_once_at_a_turn_that_occurs(case):
    """1,000 planned consultations whose length the doctor or the gate decides: each planned one is
    interrupted exactly once, at a patient turn that occurred (or, when the doctor closes first, just
    before the close), in its planned mode unless the doctor closed first."""
    cfg = EpisodeConfig(max_inquiry_turns=6)
    ids = [f"c{i}" for i in range(1000)]
    plan = plan_interruptions(ids, cfg, seed=1)
    rng = random.Random(0)
    realized = {"mid_turn": 0, "end_of_turn": 0, None: 0}
    turns_hit = set()
    for cid in ids:
        n_questions, gate_at = rng.randint(1, 6), rng.choice([None, rng.randint(1, 6)])

        async def doctor(messages, n=n_questions):
            asked = sum(m["role"] == "assistant" for m in messages)
            return DoctorReply("[END INQUIRY]" if asked >= n else f"Question {asked + 1}?")

        t = start(case, _Patient(gate_at), cfg)
        asyncio.run(run_inquiry(case, t, doctor, _Patient(gate_at), cfg, random.Random(cid), plan[cid]))
        snippets = [i for i, x in enumerate(t.turns) if x.role == "interrupt"]
        assert len(snippets) == (plan[cid] is not None)
        realized[t.interrupted] += 1
        if snippets:
            before = t.turns[snippets[0] - 1]
            assert before.role in ("patient", "doctor")  # after a turn that occurred
            turns_hit.add(sum(x.role == "patient" for x in t.turns[: snippets[0]]))
            if t.interrupted != plan[cid]:  # only a doctor closing before the draw changes the mode
                assert before.role == "doctor" and "[END INQUIRY]" in before.text
    assert realized[None] == 750 and realized["mid_turn"] + realized["end_of_turn"] == 250
    assert realized["mid_turn"] >= 110  # nearly all mid-turn plans land on a patient turn
    assert turns_hit == {1, 2, 3}  # drawn across the first half of the budget (W = 3), each turn hit


def test_mid_turn_split():
    assert split_turn("It started two days ago. It is getting worse.") == (
        "It started two days ago.",
        "It is getting worse.",
    )
    assert split_turn("I have had a cough for two days.") == ("I have had a", "cough for two days.")
    assert split_turn("No.") == ("No.", "")
