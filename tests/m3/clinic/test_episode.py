"""The four-stage consultation with a scripted doctor and the offline patient simulator."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from m3.clinic.cases import load_cases
from m3.clinic.episode import DoctorReply, EpisodeConfig, run_consultation
from m3.clinic.simulator import PatientSimulator, SimulatorConfig
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
    cfg = EpisodeConfig(interruption_rate=1.0, mid_turn_fraction=0.0, max_inquiry_turns=3)
    rng = random.Random(3)
    t = asyncio.run(run_consultation(case, ScriptedDoctor(), patient, cfg, rng))
    snippets = [x for x in t.turns if x.role == "interrupt"]
    assert t.interrupted == "end_of_turn" and len(snippets) == 1 and snippets[0].text.rstrip().endswith("?")
    assert any(snippets[0].text in m["content"] for m in t.doctor_messages())
    assert all(snippets[0].text not in m["content"] for m in t.patient_messages())


def test_episode_config_validation():
    with pytest.raises(ValueError):
        EpisodeConfig(max_inquiry_turns=0)
    with pytest.raises(ValueError):
        EpisodeConfig(interruption_rate=1.5)
