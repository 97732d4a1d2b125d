"""Claim extraction: offline rules on hand-built responses, and the LLM extractor on a fake endpoint.

Run: .venv/bin/python -m pytest tests/m3/facts/test_claims.py -q     (about 2 s, no model)
"""

from __future__ import annotations

import asyncio
import json

import pytest

from m3.facts.claims import (
    ClaimExtractionError,
    ClaimExtractorConfig,
    OpenAIClaimExtractor,
    extract_claims,
    normalize_text,
    parse_options,
    split_clauses,
    subject_of,
)
from m3.facts.types import Claim
from m3.llm import LLMConfig
from tests.fakes.openai_server import FakeOpenAIServer, Fault, chat_request_text


def texts(response: str, **kw) -> list[str]:
    return [c.text for c in extract_claims(response, **kw)]


def test_clause_splitting_on_semicolon_and_coordination():
    got = texts(
        "Metformin is first-line therapy for type 2 diabetes; it lowers hepatic glucose output. "
        "Ibuprofen relieves pain, but it can irritate the stomach lining."
    )
    assert got == [
        "Metformin is first-line therapy for type 2 diabetes.",
        "Metformin lowers hepatic glucose output.",
        "Ibuprofen relieves pain.",
        "Ibuprofen can irritate the stomach lining.",
    ]


def test_enumerations_are_not_split():
    # ", and fatigue" has no verb of its own: one claim, not three fragments
    assert texts("Fever, muscle aches, and fatigue are common influenza symptoms.") == [
        "Fever, muscle aches, and fatigue are common influenza symptoms."
    ]
    # imperatives are clauses of their own
    assert split_clauses("Rest at home for several days, and avoid strenuous exercise for a week.") == [
        "Rest at home for several days",
        "avoid strenuous exercise for a week.",
    ]
    assert split_clauses("Rest at home, and avoid strenuous exercise.") == [
        "Rest at home, and avoid strenuous exercise."
    ]


def test_which_clause_gets_the_main_subject():
    assert texts(
        "Apixaban is a direct oral anticoagulant, which has a lower bleeding risk than warfarin."
    ) == [
        "Apixaban is a direct oral anticoagulant.",
        "Apixaban has a lower bleeding risk than warfarin.",
    ]


def test_pronoun_resolution_uses_previous_subject():
    got = extract_claims(
        "Direct oral anticoagulants are preferred over warfarin in atrial fibrillation. "
        "They do not require routine INR monitoring. It's also worth noting that this is because "
        "their effect is predictable."
    )
    assert got[0] == Claim(
        "Direct oral anticoagulants are preferred over warfarin in atrial fibrillation.", 0
    )
    assert got[1] == Claim("Direct oral anticoagulants do not require routine INR monitoring.", 1)
    assert subject_of("Apixaban is dosed twice daily") == "Apixaban"
    assert subject_of("If you miss a dose, take it") is None  # subordinate opening: no subject


def test_this_is_because_is_not_resolved():
    got = texts(
        "Warfarin needs regular INR checks. This is because its effect varies with diet and other drugs."
    )
    assert got[0] == "Warfarin needs regular INR checks."
    assert not any(t.startswith("Warfarin is because") for t in got)


def test_short_fragments_dropped_and_threshold_configurable():
    response = "Yes. Stay hydrated. Amoxicillin treats streptococcal pharyngitis."
    assert texts(response) == ["Amoxicillin treats streptococcal pharyngitis."]
    assert "Stay hydrated." in texts(response, cfg=ClaimExtractorConfig(min_content_words=1))


def test_greetings_questions_and_closers_dropped_but_advice_kept():
    response = (
        "Hi there! Great question. I'm sorry to hear you're feeling unwell.\n"
        "Take ibuprofen 400 mg every 6 hours with food.\n"
        "Do you have any allergies?\n"
        "I'm not a doctor, and this is not medical advice.\n"
        "I recommend that you see a doctor if the fever lasts more than 3 days.\n"
        "I hope this helps! Let me know if you have any other questions."
    )
    assert texts(response) == [
        "Take ibuprofen 400 mg every 6 hours with food.",
        "See a doctor if the fever lasts more than 3 days.",
    ]


def test_list_items_join_their_lead_in_and_headings_are_dropped():
    response = "**Metformin side effects and risks**\nCommon side effects of metformin include:\n- nausea and diarrhea\n- a metallic taste\n"
    assert texts(response) == [
        "Common side effects of metformin include nausea and diarrhea.",
        "Common side effects of metformin include a metallic taste.",
    ]


def test_wrong_multiple_choice_options_are_skipped_but_reasons_kept():
    question = (
        "Which drug is preferred for rate control in AF with asthma?\n"
        "A. Metoprolol\nB. Diltiazem\nC. Propranolol\nD. Digoxin monotherapy"
    )
    response = (
        "The correct answer is B.\n"
        "Option A (metoprolol) is incorrect because beta-blockers can worsen bronchospasm in asthma.\n"
        "Not C, since it is a non-selective beta-blocker that is contraindicated in asthma.\n"
        "D. Digoxin monotherapy\n"
        "Diltiazem is preferred in patients with asthma."
    )
    got = texts(response, question=question)
    assert got == [
        "Beta-blockers can worsen bronchospasm in asthma.",
        "Propranolol is a non-selective beta-blocker that is contraindicated in asthma.",
        "Diltiazem is preferred in patients with asthma.",
    ]
    assert not any("metoprolol" in t.lower() for t in got)
    # without the question nothing marks the options as options
    assert any("Option A" in t for t in texts(response))
    assert parse_options("Pick one: A) aspirin B) heparin C) warfarin") == {
        "A": "aspirin",
        "B": "heparin",
        "C": "warfarin",
    }


def test_dedup_keeps_first_occurrence_in_order():
    response = (
        "Apixaban is a direct oral anticoagulant. Warfarin requires INR monitoring.\n"
        "APIXABAN is a direct-oral anticoagulant!\nWarfarin requires INR monitoring."
    )
    got = extract_claims(response)
    assert [c.text for c in got] == [
        "Apixaban is a direct oral anticoagulant.",
        "Warfarin requires INR monitoring.",
    ]
    assert [c.sentence_index for c in got] == [0, 1]
    assert normalize_text("Take 5mg, NOW!") == normalize_text("take 5 mg now")


def test_max_claims_and_bad_input():
    response = "Aspirin inhibits platelet aggregation. Heparin potentiates antithrombin. Warfarin antagonises vitamin K."
    assert len(extract_claims(response, cfg=ClaimExtractorConfig(max_claims=2))) == 2
    assert extract_claims("") == []
    with pytest.raises(ValueError):
        extract_claims(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ClaimExtractorConfig(max_claims=0)


# --- LLM extractor ---------------------------------------------------------------------------


def llm_cfg(srv: FakeOpenAIServer, **kw) -> LLMConfig:
    return LLMConfig(
        model="fake-model", base_url=srv.base_url, timeout_s=5, backoff_base_s=0.01, backoff_max_s=0.02, **kw
    )


def test_openai_extractor_parses_filters_and_dedups():
    seen: list[str] = []

    def responder(request: dict) -> str:
        seen.append(chat_request_text(request))
        return json.dumps(
            {
                "claims": [
                    "Apixaban is dosed at 5 mg twice daily",
                    "apixaban is dosed at 5 mg twice daily.",
                    "Yes",
                    "Warfarin needs INR checks",
                ]
            }
        )

    response = "Apixaban is a DOAC. It is dosed at 5 mg twice daily. Warfarin needs INR checks."
    with FakeOpenAIServer(responder=responder) as srv:
        extractor = OpenAIClaimExtractor(llm_cfg(srv))
        got = asyncio.run(extractor.extract(response, question="A. apixaban B. warfarin"))
    assert got == [Claim("Apixaban is dosed at 5 mg twice daily.", 1), Claim("Warfarin needs INR checks.", 2)]
    assert "# Question\nA. apixaban B. warfarin" in seen[0] and response in seen[0]


def test_openai_extractor_reasks_on_bad_schema_and_raises_on_failure():
    good = json.dumps({"claims": ["Metformin is first-line therapy for type 2 diabetes."]})
    with FakeOpenAIServer(
        responder=lambda r: good, faults=[Fault.content('{"claims": "not a list"}')]
    ) as srv:
        extractor = OpenAIClaimExtractor(llm_cfg(srv))
        got = asyncio.run(extractor.extract("Metformin is first-line therapy for type 2 diabetes."))
        assert [c.text for c in got] == ["Metformin is first-line therapy for type 2 diabetes."]
        assert srv.request_count == 2  # one re-ask
    with FakeOpenAIServer(faults=[Fault.http(400)]) as srv:
        extractor = OpenAIClaimExtractor(llm_cfg(srv))
        with pytest.raises(ClaimExtractionError, match="http_400"):
            asyncio.run(extractor.extract("Metformin is first-line therapy."))
