"""Stage verifiers G_k on hand-built transcripts of case 0 (myasthenia gravis, G70.0)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.transcript import Transcript
from m3.clinic.verifiers import VerifierConfig, lab_f1, stage_scores

DATA = Path(__file__).resolve().parents[3] / "data" / "agentclinic_medqa.jsonl"


@pytest.fixture(scope="module")
def case():
    return load_cases(DATA)[0]


def transcript(ddx: str, labs: str, final: str, facts: list[list[str]]) -> Transcript:
    t = Transcript("agentclinic_medqa-0000")
    t.add(
        "instruction",
        "Stage 1 ... The patient says: 'I have double vision.'",
        "inquiry",
        meta={"facts": ["h1"]},
    )
    for i, f in enumerate(facts):
        t.add("doctor", f"question {i}?", "inquiry")
        t.add("patient", f"answer {i}", "inquiry", meta={"facts": f})
    t.add("doctor", "[END INQUIRY]", "inquiry")
    for stage, text in (("ddx", ddx), ("lab", labs), ("diagnosis", final)):
        t.add("instruction", f"Stage {stage}", stage)
        t.add("doctor", text, stage)
    return t


def test_inquiry_coverage_weighted_and_repeats_count_once(case):
    # checklist: h1..h6 criticality 2, h7..h10 criticality 1; h1 was in the opening -> excluded.
    # denominator = 5*2 + 4*1 = 14; covered h2 (2), h3 (2), h8 (1); h2 asked twice counts once -> 5/14
    t = transcript(
        "1. Myasthenia gravis", "1. EMG", "Final diagnosis: Myasthenia gravis", [["h2"], ["h3", "h8"], ["h2"]]
    )
    assert stage_scores(case, t)["inquiry"] == pytest.approx(5 / 14)


def test_ddx_rank_aware_and_diagnosis_hierarchical(case):
    t1 = transcript("1. Myasthenia gravis\n2. Botulism", "", "Final diagnosis: Myasthenia gravis", [])
    t2 = transcript(
        "1. Botulism\n2. Lambert-Eaton syndrome\n3. Myasthenia gravis", "", "Final diagnosis: Botulism", []
    )
    s1, s2 = stage_scores(case, t1), stage_scores(case, t2)
    assert s1["ddx"] == 1.0 and s1["diagnosis"] == 1.0
    assert s2["ddx"] == pytest.approx(1 / math.log2(4))  # correct at rank 3
    # botulism A05.1: infectious chapter, off-branch from G70.0 -> penalty
    assert s2["diagnosis"] == VerifierConfig().relation_scores["off_branch"]
    # Lambert-Eaton G73.1 shares the block G70-G73 -> 0.4; multiple sclerosis G35 the chapter -> 0.2
    t3 = transcript("", "", "Final diagnosis: Lambert-Eaton syndrome", [])
    t4 = transcript("", "", "Final diagnosis: Multiple sclerosis", [])
    assert stage_scores(case, t3)["diagnosis"] == 0.4 and stage_scores(case, t4)["diagnosis"] == 0.2


def test_lab_weighted_f1_by_hand(case):
    # reference: autoantibodies (E), emg_ncs (E), ct_chest (optional); w = 2
    t = transcript("", "1. Acetylcholine receptor antibodies\n2. Chest CT\n3. Complete blood count", "", [])
    # ordered {autoantibodies, ct_chest, cbc}: P = 2/3; R_w = (2*1 + 1) / (2*2 + 1) = 3/5; F1 = 2PR/(P+R)
    p, r = 2 / 3, 3 / 5
    assert stage_scores(case, t)["lab"] == pytest.approx(2 * p * r / (p + r))


def test_lab_f1_edges():
    assert lab_f1(set(), set(), set(), 2.0) == 1.0 and lab_f1({"cbc"}, set(), set(), 2.0) == 0.0
    assert lab_f1(set(), {"cbc"}, {"cbc"}, 2.0) == 0.0
    # essential recall weighs more: missing the essential test hurts more than missing the optional one
    ref, ess = {"a", "b"}, {"a"}
    assert lab_f1({"a"}, ref, ess, 2.0) > lab_f1({"b"}, ref, ess, 2.0)


def test_unknown_code_falls_back_to_text_match(case):
    from dataclasses import replace

    from m3.clinic.icd10 import Diagnosis

    nocode = replace(case, diagnosis=Diagnosis("Hemophilia A"))
    good = transcript("", "", "Final diagnosis: hemophilia A", [])
    bad = transcript("", "", "Final diagnosis: Migraine", [])
    assert stage_scores(nocode, good)["diagnosis"] == 1.0
    assert stage_scores(nocode, bad)["diagnosis"] == -0.2
