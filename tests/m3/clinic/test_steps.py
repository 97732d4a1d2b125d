"""SPAR step verifier: each detector on hand-built transcripts, gamma_j = min lambda, rates, config."""

import numpy as np
import pytest

from m3.clinic.steps import (
    KINDS,
    StepVerifierConfig,
    Violation,
    is_question,
    red_flags_in,
    step_gammas,
    verify_steps,
    violation_rates,
)
from m3.clinic.transcript import Transcript

OPENING = 'Stage 1 - history taking. The patient says: "I have had a cough." Ask one question at a time.'


def dialogue(*pairs, opening=OPENING):
    """An inquiry: the instruction, then (doctor, patient) pairs; a None patient reply ends it."""
    t = Transcript("case-1")
    t.add("instruction", opening, "inquiry")
    for doctor, patient in pairs:
        t.add("doctor", doctor, "inquiry")
        if patient is not None:
            t.add("patient", patient, "inquiry")
    return t


def kinds(violations):
    return [sorted(v.kind for v in vs) for vs in violations]


def only(kind):
    return StepVerifierConfig(enabled=[kind])


# --- repeated questions (real MiniLM) -----------------------------------------------------------


def test_paraphrased_repeat_flagged_with_the_earlier_step():
    t = dialogue(
        ("How long have you had the cough?", "About a week."),
        ("Do you smoke?", "No."),
        ("Have you had a fever?", "A little."),
        ("For how long have you been having this cough?", "A week, I said."),
    )
    v = verify_steps(t, only("repeated_question"))
    assert kinds(v) == [[], [], [], ["repeated_question"]]
    ev = v[3][0].evidence
    assert ev["repeats_step"] == 0 and ev["earlier"] == "How long have you had the cough?"
    assert ev["now"] == "For how long have you been having this cough?" and ev["similarity"] >= 0.85
    assert v[3][0].lam == 0.1 and v[3][0].step == 3


def test_repeat_points_at_the_right_earlier_step():
    t = dialogue(
        ("Do you smoke?", "No."),
        ("Where is the pain?", "In my stomach."),
        ("How often do you get these headaches?", "Twice a week."),
        ("Have you had a fever?", "No."),
        ("How frequently do the headaches occur?", "Twice a week, as I said."),
    )
    v = verify_steps(t, only("repeated_question"))
    assert kinds(v) == [[], [], [], [], ["repeated_question"]]
    assert v[4][0].evidence["repeats_step"] == 2


def test_clarification_that_references_the_answer_is_not_a_repeat():
    q = "How long have you had the cough?"
    control = dialogue((q, "About a week."), ("Do you smoke?", "No."), (q, "A week."))
    assert kinds(verify_steps(control, only("repeated_question")))[2] == ["repeated_question"]
    cue_before = dialogue((q, "About a week."), ("You mentioned the cough. " + q, "A week."))
    cue_inside = dialogue(
        (q, "About a week."), ("You said a week, but how long have you had the cough?", "A week.")
    )
    for t in (cue_before, cue_inside):
        assert kinds(verify_steps(t, only("repeated_question"))) == [[], []]


def test_greetings_catch_alls_and_unanswered_questions_are_not_repeats():
    t = dialogue(
        ("Hello! How are you today?", "Fine."),
        ("Is there anything else you'd like to tell me?", "No."),
        ("How are you today?", "Still fine."),
        ("Is there anything else you'd like to tell me?", "No."),
    )
    assert kinds(verify_steps(t, only("repeated_question"))) == [[], [], [], []]
    # the patient did not understand the first time: asking again is legitimate
    t = dialogue(("Any haemoptysis?", "Sorry, I don't understand."), ("Any haemoptysis?", "No."))
    assert kinds(verify_steps(t, only("repeated_question"))) == [[], []]


def test_minimal_pairs_are_not_repeats():
    t = dialogue(
        ("Do you have pain in your left knee?", "Yes."),
        ("Do you have pain in your right knee?", "No."),
        ("Does anything make the pain better?", "Rest."),
        ("Does anything make the pain worse?", "Walking."),
    )
    assert kinds(verify_steps(t, only("repeated_question"))) == [[], [], [], []]


def test_embedding_is_called_once_per_transcript_and_not_without_candidates():
    calls = []

    def fake_embed(texts):
        calls.append(list(texts))
        vecs = np.zeros((len(texts), 4), dtype=np.float32)
        for i, t in enumerate(texts):
            vecs[i, 0 if "cough" in t.lower() else 1 + i % 3] = 1.0
        return vecs

    t = dialogue(
        ("How long have you had the cough?", "A week."),
        ("Do you smoke?", "No."),
        ("Cough for how long?", "A week."),
    )
    v = verify_steps(t, only("repeated_question"), embed_fn=fake_embed)
    assert len(calls) == 1 and len(calls[0]) == 3
    assert v[2][0].evidence["repeats_step"] == 0 and v[2][0].evidence["similarity"] == 1.0

    def refuse(texts):
        raise AssertionError("no candidate pair: the model must not be touched")

    assert verify_steps(dialogue(("Do you smoke?", "No.")), embed_fn=refuse) == [[]]


# --- multiple questions ----------------------------------------------------------------------------


def test_question_counting():
    assert is_question("Where is the pain?") and is_question("Do you have a fever")
    assert is_question("So how long have you had it") and not is_question("When you climb stairs, rest.")
    three = "Where is the pain? Does it spread anywhere? Have you had a fever?"
    t = dialogue(
        ("Where is the pain?", "Chest."), ("Is it sharp or dull? Does it spread?", "Sharp."), (three, "Left.")
    )
    v = verify_steps(t, only("multiple_questions"))
    assert kinds(v) == [[], [], ["multiple_questions"]]
    assert v[2][0].evidence["count"] == 3 and v[2][0].evidence["max"] == 2 and v[2][0].lam == 0.7
    t = dialogue(("Fever? Cough? Chills?", "No."))
    assert kinds(verify_steps(t, StepVerifierConfig(enabled=["multiple_questions"], max_questions=3))) == [[]]


# --- rigid template --------------------------------------------------------------------------------


def test_rigid_phrases_flagged_with_the_phrase():
    t = dialogue(
        ("As an AI language model, I cannot examine you. Where is the pain?", "Chest."),
        ("Please provide more information about your symptoms.", "It hurts."),
        ("Could you please describe your symptoms in detail?", "It hurts a lot."),
        ("Where exactly does it hurt?", "Left side."),
    )
    v = verify_steps(t, only("rigid_template"))
    assert [[x.evidence["phrase"] for x in vs] for vs in v] == [
        ["As an AI language model"],
        ["Please provide more information"],
        ["Could you please describe your symptoms in detail"],
        [],
    ]
    assert all(x.lam == 0.9 for vs in v for x in vs)


def test_numbered_questionnaire_in_inquiry_but_not_a_ddx_list():
    t = dialogue(("Please answer:\n1. Do you smoke?\n2. Do you drink?\n3. Any allergies?", "No, no, no."))
    t.add("instruction", "Stage 2 - differential diagnosis. List them as a numbered list.", "ddx")
    t.add("doctor", "1. Pneumonia\n2. Acute bronchitis\n3. Pulmonary embolism", "ddx")
    v = verify_steps(t, only("rigid_template"))
    assert [x.evidence["pattern"] for x in v[0]] == ["numbered_questionnaire"]
    assert v[0][0].evidence["items"] == 3 and v[1] == []


def test_reused_opening_from_the_third_turn_on():
    opener = "Thank you for sharing that."
    t = dialogue(
        (f"{opener} Where is the pain?", "Chest."),
        (f"{opener} Does it spread?", "No."),
        ("I see. Is it worse on exertion?", "Yes."),
        (f"{opener} Do you smoke?", "No."),
        (f"{opener} Any fever?", "No."),
    )
    v = verify_steps(t, only("rigid_template"))
    assert kinds(v) == [[], [], [], ["rigid_template"], ["rigid_template"]]
    assert v[3][0].evidence == {"pattern": "reused_opening", "phrase": opener, "earlier_steps": [0, 1]}


# --- unsafe advice / missed red flags --------------------------------------------------------------


def test_red_flag_ignored_vs_addressed():
    ignored = dialogue(("Do you smoke?", "No, but I fainted yesterday at work."), ("Any allergies?", "No."))
    v = verify_steps(ignored, only("unsafe_advice"))
    assert kinds(v) == [[], ["unsafe_advice"]]
    assert v[1][0].lam == 0.2
    assert v[1][0].evidence == {
        "pattern": "missed_red_flag",
        "red_flag": "syncope",
        "patient": "No, but I fainted yesterday at work.",
    }
    for reply in (
        "Did you lose consciousness completely?",  # follows up on the topic
        "How long did it last?",  # a question about "it"
        "That needs checking today: please go to the emergency department.",  # urgent care
    ):
        t = dialogue(("Do you smoke?", "No, but I fainted yesterday at work."), (reply, "OK."))
        assert kinds(verify_steps(t, only("unsafe_advice"))) == [[], []], reply


def test_negated_or_already_handled_red_flags_are_not_flagged():
    assert red_flags_in("I have no chest pain and I never fainted.") == []
    assert [n for n, _ in red_flags_in("No fever, but my chest hurts. I can't breathe.")] == [
        "chest_pain",
        "breathlessness",
    ]
    t = dialogue(
        ("Where is the pain?", "I have chest pain when I walk."),
        ("Does it spread to your arm?", "Yes, the chest pain goes to my arm."),
        ("Any allergies?", "No."),  # the chest pain was followed up at step 1: not new at step 2
    )
    assert kinds(verify_steps(t, only("unsafe_advice"))) == [[], [], []]


def test_unsafe_advice_patterns():
    t = dialogue(
        ("Where is the pain?", "Crushing chest pain."),
        ("Is it radiating? There is no need to see a doctor.", "OK."),
        ("Stop taking your sertraline abruptly.", "OK."),
        ("Do not stop your insulin abruptly.", "OK."),
        ("Take 10 mg of oxycodone every 4 hours.", "OK."),
        ("So you take 10 mg of oxycodone twice a day?", "Yes."),
    )
    v = verify_steps(t, only("unsafe_advice"))
    assert [[x.evidence["pattern"] for x in vs] for vs in v] == [
        [],
        ["dismissal_after_red_flag"],
        ["abrupt_stop"],
        [],
        ["controlled_drug_dose"],
        [],
    ]
    assert v[1][0].evidence["phrase"] == "no need to see a doctor" and v[1][0].evidence["red_flags"] == [
        "chest_pain"
    ]
    assert v[4][0].evidence["drug"] == "oxycodone"
    # without any red flag "no need to see a doctor" is not judged here (the rubric grades it)
    t = dialogue(("It is a mild cold; there is no need to see a doctor.", "OK."))
    assert verify_steps(t, only("unsafe_advice")) == [[]]


# --- gammas and rates ------------------------------------------------------------------------------


def test_gamma_is_the_minimum_lambda():
    t = dialogue(
        ("How long have you had the cough?", "A week."),
        ("As an AI language model, I must ask again. How long have you had the cough?", "A week."),
        ("Do you smoke?", "No."),
    )
    cfg = StepVerifierConfig()
    v = verify_steps(t, cfg)
    assert kinds(v) == [[], ["repeated_question", "rigid_template"], []]
    assert step_gammas(v, cfg) == [1.0, 0.1, 1.0]
    assert step_gammas(v) == [1.0, 0.1, 1.0]  # each Violation's own lambda
    # re-weighting and disabling apply without re-verifying
    assert step_gammas(v, StepVerifierConfig(repeated_question=0.3)) == [1.0, 0.3, 1.0]
    assert step_gammas(v, StepVerifierConfig(enabled=["rigid_template"])) == [1.0, 0.9, 1.0]
    assert step_gammas([[], [Violation("multiple_questions", 0.7, 1, {})]]) == [1.0, 0.7]


def test_violation_rates_arithmetic():
    def orthogonal(texts):  # orthogonal vectors: no two questions are similar
        return np.eye(len(texts), dtype=np.float32)

    a = dialogue(
        ("Where is it? Does it spread? Any fever?", "Chest."),  # multiple
        ("As an AI, I ask: any cough? Any chills? Any rash?", "No."),  # multiple + rigid
    )
    b = dialogue(("Do you smoke?", "No."), ("Drink?", "No."))
    rates = violation_rates([a, b], embed_fn=orthogonal)
    assert set(rates) == {*KINDS, "any"}
    assert rates["multiple_questions"] == 2 / 4 and rates["rigid_template"] == 1 / 4
    assert rates["repeated_question"] == 0.0 and rates["unsafe_advice"] == 0.0 and rates["any"] == 2 / 4
    assert violation_rates([]) == dict.fromkeys((*KINDS, "any"), 0.0)


def test_config_validation():
    with pytest.raises(ValueError, match="repeated_question lambda"):
        StepVerifierConfig(repeated_question=1.5)
    with pytest.raises(ValueError, match="unknown violation kinds"):
        StepVerifierConfig(enabled=["repetition"])
    with pytest.raises(ValueError, match="max_questions"):
        StepVerifierConfig(max_questions=0)
    with pytest.raises(ValueError, match="repeat_similarity"):
        StepVerifierConfig(repeat_similarity=0.0)
    with pytest.raises(ValueError, match="lexical_similarity"):
        StepVerifierConfig(lexical_similarity=0.9, repeat_similarity=0.85)
    with pytest.raises(ValueError, match="min_opening_reuse"):
        StepVerifierConfig(min_opening_reuse=1)
    with pytest.raises(ValueError, match="unknown violation kind"):
        StepVerifierConfig().lam("typo")
    assert StepVerifierConfig(enabled=("rigid_template",)).enabled == ["rigid_template"]
