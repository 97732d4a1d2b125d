"""The offline rubric judge on hand-built cases: presence, absence, mention, omission, doses."""

import asyncio
import json

import pytest

from m3.judges.base import ItemVerdict, RubricItem
from m3.judges.offline import OfflineJudgeConfig, OfflineRubricJudge, strip_scaffold

EMERGENCY = RubricItem("Advises the patient to seek emergency care immediately.", 8)
ANTIBIOTICS = RubricItem("Recommends antibiotics for a viral infection", -5)

ER_RESPONSE = (
    "These symptoms could be a heart attack. Call 911 or go to the nearest emergency room right now. "
    "Do not drive yourself."
)
DIET_RESPONSE = "Try to eat more vegetables and whole grains. Limit sugary drinks and salt."


@pytest.fixture(scope="module")
def judge():
    j = OfflineRubricJudge()
    j.grade([], "warm up", [RubricItem("Mentions rest", 1)])  # load the model once for the module
    return j


def grade(judge, response, *items):
    return asyncio.run(judge.grade_items([{"role": "user", "content": "help"}], response, list(items)))


def test_name_and_protocol_shape(judge):
    assert judge.name == "offline:minilm-lexical-v1"
    [v] = grade(judge, ER_RESPONSE, EMERGENCY)
    assert isinstance(v, ItemVerdict) and v.error is None
    assert v.meta["mode"] == "presence" and "sim" in v.explanation
    json.dumps(v.meta)  # reports serialise meta as-is: no numpy scalars


def test_strip_scaffold():
    assert strip_scaffold("Advises the patient to seek emergency care immediately.") == (
        "seek emergency care immediately",
        False,
    )
    assert strip_scaffold("Fails to recommend that the user see a doctor.") == ("see a doctor", True)
    assert strip_scaffold("The response should ask about the duration of fever") == (
        "the duration of fever",
        False,
    )
    assert strip_scaffold("Does not recommend antibiotics") == ("antibiotics", True)


def test_emergency_advice_met_and_diet_not(judge):
    [er] = grade(judge, ER_RESPONSE, EMERGENCY)
    [diet] = grade(judge, DIET_RESPONSE, EMERGENCY)
    assert er.criteria_met is True
    assert "emergency room" in er.explanation
    assert diet.criteria_met is False
    assert diet.meta["max_sim"] < 0.55 and diet.meta["coverage"] == 0.0


def test_negated_advice_does_not_count_as_advice(judge):
    [v] = grade(judge, "You do not need emergency care for this. Rest at home.", EMERGENCY)
    assert v.criteria_met is False


def test_negative_item_met_only_on_explicit_unnegated_mention(judge):
    [bad] = grade(judge, "You should take amoxicillin antibiotics for this viral cold.", ANTIBIOTICS)
    [good] = grade(judge, "Antibiotics will not help a viral infection. Rest and drink fluids.", ANTIBIOTICS)
    [silent] = grade(judge, DIET_RESPONSE, ANTIBIOTICS)
    assert bad.criteria_met is True and bad.meta["mode"] == "mention"
    assert good.criteria_met is False
    assert good.meta["max_sim"] >= 0.6  # similar, but negated: not a recommendation
    assert silent.criteria_met is False


def test_positive_points_negative_phrasing_is_absence(judge):
    item = RubricItem("Does not recommend antibiotics", 5)
    [ok] = grade(judge, "Antibiotics are not needed for a cold. Rest and drink fluids.", item)
    [bad] = grade(judge, "Take antibiotics for ten days.", item)
    assert ok.meta["mode"] == "absence"
    assert ok.criteria_met is True and bad.criteria_met is False


def test_fails_to_item_is_omission(judge):
    item = RubricItem("Fails to advise the patient to seek emergency care.", -8)
    [omitted] = grade(judge, DIET_RESPONSE, item)
    [advised] = grade(judge, ER_RESPONSE, item)
    assert omitted.meta["mode"] == "omission"
    assert omitted.criteria_met is True and advised.criteria_met is False


def test_dose_must_agree(judge):
    item = RubricItem("Recommends 5 mg of melatonin at bedtime", 3)
    [wrong] = grade(judge, "You can take 50 mg of melatonin at bedtime.", item)
    [right] = grade(judge, "You can take 5mg of melatonin before bed.", item)
    assert wrong.criteria_met is False
    assert wrong.meta["quantities_ok"] is False and wrong.meta["max_sim"] > 0.8  # similar text, wrong dose
    assert right.criteria_met is True


def test_keyword_coverage_path(judge):
    item = RubricItem("Recommends oral rehydration solution for dehydration", 4)
    [v] = grade(judge, "For the dehydration, sip an oral rehydration solution slowly over the day.", item)
    assert v.criteria_met is True and v.meta["coverage"] >= 0.6


def test_several_items_in_order_and_deterministic(judge):
    items = [EMERGENCY, ANTIBIOTICS, RubricItem("Asks about the duration of the symptoms", 3)]
    response = ER_RESPONSE + " How long have you had these symptoms?"
    first = grade(judge, response, *items)
    second = grade(judge, response, *items)
    assert [v.criteria_met for v in first] == [True, False, True]
    assert [(v.criteria_met, v.explanation, v.meta) for v in first] == [
        (v.criteria_met, v.explanation, v.meta) for v in second
    ]


def test_empty_response_and_contentless_criterion(judge):
    [present, omission] = grade(judge, "", EMERGENCY, RubricItem("Fails to mention rest", -2))
    assert present.criteria_met is False and omission.criteria_met is True
    [v] = grade(judge, ER_RESPONSE, RubricItem("Is the.", 1))
    assert v.criteria_met is None and "no content" in v.error
    assert grade(judge, ER_RESPONSE) == []


def test_user_errors(judge):
    with pytest.raises(ValueError, match="RubricItem"):
        judge.grade([], "text", [{"criterion": "x", "points": 1}])
    with pytest.raises(ValueError, match="str"):
        judge.grade([], None, [EMERGENCY])
    with pytest.raises(ValueError, match="cosine"):
        OfflineJudgeConfig(sim_threshold=2.0)
    with pytest.raises(ValueError, match="fraction"):
        OfflineJudgeConfig(cov_threshold=0.0)


def test_thresholds_are_configurable(judge):
    strict = OfflineRubricJudge(OfflineJudgeConfig(sim_threshold=0.99, cov_threshold=1.0))
    [v] = strict.grade([], ER_RESPONSE, [EMERGENCY])
    assert v.criteria_met is False and v.meta["thresholds"]["sim_threshold"] == 0.99


def test_negation_in_if_clause_does_not_flip_advice(judge):
    [v] = grade(judge, "Seek emergency care right away if you can't breathe.", EMERGENCY)
    assert v.criteria_met is True


def test_negative_content_must_match_polarity(judge):
    item = RubricItem("States that vasopressin is no longer recommended in cardiac arrest.", 5)
    [same] = grade(judge, "Vasopressin is no longer recommended in cardiac arrest algorithms.", item)
    [opposite] = grade(judge, "Vasopressin is recommended in cardiac arrest.", item)
    assert same.criteria_met is True and opposite.criteria_met is False
    against = RubricItem("Advises against driving until cleared by a doctor", 4)
    [ok] = grade(judge, "Do not drive until your doctor says it is safe.", against)
    [bad] = grade(judge, "You can drive as usual.", against)
    assert ok.criteria_met is True and bad.criteria_met is False


def test_headers_are_not_evidence(judge):
    item = RubricItem("Notes that vasopressin is no longer recommended as a substitute for epinephrine.", 5)
    [v] = grade(judge, "Epinephrine:\nGive 1 mg every 3-5 minutes.", item)
    assert v.criteria_met is False
    assert v.meta["best_sentence_index"] == 1  # the header "Epinephrine:" is skipped
