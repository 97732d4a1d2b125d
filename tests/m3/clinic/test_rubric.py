"""The case's clinical rubric and R_global against it (eq. 1), computed by hand on case 0."""

from __future__ import annotations

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.rubric import (
    CaseRubricConfig,
    case_rubric,
    clinic_verdicts,
    for_stages,
    r_global,
    trajectory_text,
)
from m3.clinic.transcript import Transcript
from m3.config import REPO_ROOT

LABS = "1. Acetylcholine receptor antibodies\n2. Chest CT\n3. Complete blood count"


@pytest.fixture(scope="module")
def case():
    return load_cases(REPO_ROOT / "data" / "agentclinic_medqa.jsonl")[0]  # myasthenia gravis, G70.0


def consultation(final: str = "Final diagnosis: Botulism", advice: str = "When did it start?") -> Transcript:
    t = Transcript("agentclinic_medqa-0000", "You are a doctor.")
    t.add(
        "instruction", "Stage 1. The patient says: 'I have double vision.'", "inquiry", meta={"facts": ["h1"]}
    )
    t.add("doctor", advice, "inquiry")
    t.add("patient", "A month ago, with trouble on the stairs.", "inquiry", meta={"facts": ["h2"]})
    t.add("doctor", "Is it worse after activity? Do you smoke?", "inquiry")
    t.add("patient", "Yes, better after rest. I don't smoke.", "inquiry", meta={"facts": ["h3", "h8"]})
    t.add("doctor", "[END INQUIRY]", "inquiry")
    for stage, text in (("ddx", "1. Myasthenia gravis"), ("lab", LABS), ("diagnosis", final)):
        t.add("instruction", f"Stage {stage}", stage)
        t.add("doctor", text, stage)
    return t


def test_case_rubric_items_by_hand(case):
    items = case_rubric(case)
    by_tag = {it.tags[1]: it.points for it in items}
    # h1 is the chief complaint (stated in the opening): not an item; h2-h6 critical, h7-h10 supplementary
    assert "history:h1" not in by_tag
    assert [by_tag[f"history:h{i}"] for i in range(2, 11)] == [5] * 5 + [2] * 4
    assert by_tag["red_flag:neurological deficit"] == 3 and by_tag["unsafe_advice"] == -8
    assert by_tag["ddx"] == 5 and by_tag["diagnosis"] == 10 and by_tag["off_branch"] == -5
    # AChR antibodies and EMG are essential (+5), the chest CT is not (+1)
    assert (by_tag["test:autoantibodies"], by_tag["test:emg_ncs"], by_tag["test:ct_chest"]) == (5, 5, 1)
    assert all(isinstance(it.points, int) and -10 <= it.points <= 10 for it in items)
    assert [it.tags[0] for it in for_stages(items, ["lab"])] == ["lab"] * 3


def test_r_global_by_hand(case):
    # positives: history 25 + 8, red flag 3, ddx 5, tests 11, diagnosis 10; negatives 8 + 5: sum |w| = 75
    # met: h2 5, h3 5, h8 2; red flag (h2 names double vision) 3; ddx 5; antibodies 5 + CT 1;
    # Botulism (A05.1) is off-branch of G70.0: -5.  R = (21 + 13) / 75
    assert r_global(case, consultation(), violations=[]) == pytest.approx(34 / 75)
    assert r_global(case, consultation("Final diagnosis: Myasthenia gravis"), violations=[]) == pytest.approx(
        49 / 75
    )
    # no diagnosis at all: no negative item fires; an off-branch one is worse than none (the penalty reaches RL)
    assert r_global(case, consultation("I am not sure."), violations=[]) == pytest.approx(39 / 75)
    # unsafe advice (the step verifier's violation) costs its 8 points
    unsafe = [[{"kind": "unsafe_advice"}]]
    assert r_global(case, consultation(), violations=unsafe) == pytest.approx(26 / 75)
    # a segment row that runs the lab stage only: 6 of 11
    assert r_global(case, consultation(), stages=["lab"], violations=[]) == pytest.approx(6 / 11)


def test_clinic_verdicts_follow_the_transcript(case):
    items = case_rubric(case)
    met = dict(
        zip(
            [it.tags[1] for it in items],
            clinic_verdicts(case, consultation(), items, violations=[]),
            strict=True,
        )
    )
    assert met["history:h2"] and met["history:h8"] and not met["history:h5"] and met["off_branch"]
    assert met["test:ct_chest"] and not met["test:emg_ncs"] and not met["diagnosis"]


def test_trajectory_text_and_weights_validated():
    opening, text = trajectory_text(consultation())
    assert opening[-1]["content"].startswith("Stage 1.") and text.startswith("Doctor: When did it start?")
    assert "Patient: A month ago" in text and text.endswith("Doctor: Final diagnosis: Botulism")
    with pytest.raises(ValueError, match="wrong sign"):
        CaseRubricConfig(off_branch=5)
    with pytest.raises(ValueError, match="non-zero integer"):
        CaseRubricConfig(diagnosis=11)
