"""The patient simulator: passive persona, no leaks, gate, interruptions, LLM backend with its check.

The offline backend runs over all 107 AgentClinic MedQA cases; the fact embeddings are computed once
per module (`PatientSimulator.prepare`). The leak and relevance checks below are written here on
purpose instead of reusing the simulator's own, so the two do not share a blind spot.
"""

import asyncio
import json
import random
import re
from pathlib import Path

import pytest

from m3.clinic.case_files import load_cases
from m3.clinic.episode import EpisodeConfig, PatientReply, run_inquiry
from m3.clinic.patient.config import SimulatorConfig
from m3.clinic.patient.guards import check_reply, termination_gate
from m3.clinic.patient.persona import DONT_KNOW, INTERRUPTIONS, PARENT_INTERRUPTIONS, first_person
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.transcript import Transcript
from m3.text import embeddings
from m3.text.lexical import extract_quantities, same_quantity
from m3.text.normalize import fold, tokens
from tests.fakes.openai_server import FakeOpenAIServer, Fault

DATA = Path(__file__).resolve().parents[3] / "data" / "agentclinic_medqa.jsonl"

PRESENT = {"chief_complaint", "hpi", "symptom"}
# question -> which facts may answer it (category or words of the fact); None = no fact at all
SCRIPT = {
    "When did this start?": lambda f: f.category in PRESENT,
    "How long have you had these symptoms?": lambda f: f.category in PRESENT,
    "Are you taking any medications?": lambda f: f.category == "medication"
    or re.search(r"medic|tak(e|es|ing)|treat|manag|regimen|therap|prescri|supplement|vitamin|insulin|inhaler|\bon\b", f.text, re.I),
    "Does anyone in your family have a similar problem?": lambda f: f.category == "family"
    or re.search(r"family|familial|genetic|hereditary|mother|father|brother|sister|sibling|uncle|aunt", f.text, re.I),
    "Do you smoke?": lambda f: f.category == "social" or re.search(r"smok|tobacco|cigar", f.text, re.I),
    "Do you have any allergies?": lambda f: f.category == "allergy" or re.search(r"allerg", f.text, re.I),
    "What do you think you have?": lambda f: re.search(r"believ|think|attribut|blame|cause", f.text, re.I),
    "What did your tests show?": None,
}  # fmt: skip
GENERIC = set(
    "disease disorder syndrome infection acute chronic primary secondary essential progressive posterior "
    "anterior complex partial double multiple system physiological normal behavior reactive impaired "
    "production unspecified other neonatal newborn deficiency failure rupture congenital diffuse large".split()
)


@pytest.fixture(scope="module")
def cases():
    return load_cases(DATA)


@pytest.fixture(scope="module")
def sim(cases):
    s = PatientSimulator()
    # all facts of all cases in one call; batches of 128 encode these short texts about twice as fast
    # on CPU as the default 32 (the setting is process-wide, so it is put back)
    before = embeddings.configure()
    embeddings.configure(batch_size=128)
    try:
        s.prepare(cases)
    finally:
        embeddings.configure(batch_size=before.batch_size)
    return s


@pytest.fixture(scope="module")
def replies(cases, sim):
    return {(c.case_id, q): sim.answer(c, q) for c in cases for q in SCRIPT}


def _history_text(case) -> str:
    return " ".join(
        fold(t) for t in [f.text for f in case.history] + [case.chief_complaint, case.demographics.text]
    )


def _said(word: str, text: str) -> bool:
    """`word` (folded) appears in `text` as a token, or as the stem of a long token."""
    toks = tokens(text)
    return word in toks or (len(word) >= 8 and any(t.startswith(word[:-2]) for t in toks))


def dx_words(case) -> set[str]:
    """Distinctive diagnosis words the patient cannot know: not common, not in its own history."""
    history = set(_history_text(case).split())
    words = tokens(case.diagnosis.text) + tokens(case.diagnosis.icd10_title or "")
    return {
        w for w in words if len(w) >= 5 and w not in GENERIC and not any(h.startswith(w[:5]) for h in history)
    }


def result_evidence(case):
    history = _history_text(case)
    values = [t.value for t in case.test_results] + [e.value for e in case.exam_findings]
    words = {w for v in values for w in tokens(v) if len(w) >= 9 and w.isalpha() and w[:7] not in history}
    history_q = [q for f in case.history for q in extract_quantities(f.text)]
    qs = [q for v in values for q in extract_quantities(v) if not any(same_quantity(q, h) for h in history_q)]
    return words, qs


def assert_no_leak(case, text):
    leaked = [w for w in dx_words(case) if _said(w, text)]
    assert not leaked, f"{case.case_id}: {text!r} names the diagnosis ({leaked}, dx {case.diagnosis.text!r})"
    words, qs = result_evidence(case)
    assert not [w for w in words if _said(w, text)], f"{case.case_id}: {text!r} states a result"
    said_qs = extract_quantities(text)
    assert not any(same_quantity(a, b) for a in said_qs for b in qs), (
        f"{case.case_id}: {text!r} states a value"
    )


# --- offline backend over the 107 cases -----------------------------------------------------------


def test_sample_has_distinctive_diagnosis_words(cases):
    # the leak checks below are only meaningful if most diagnoses have a word to leak
    assert sum(bool(dx_words(c)) for c in cases) >= 95
    assert dx_words(cases[0]) == {"myasthenia", "gravis"}


def test_opening_states_the_chief_complaint_and_never_the_diagnosis(cases, sim):
    for case in cases:
        opening = sim.opening(case)
        assert opening.text.startswith("Hello, doctor. I'm here")
        assert opening.fact_ids == [f.id for f in case.history if f.category == "chief_complaint"]
        assert_no_leak(case, opening.text)
        assert check_reply(case, opening.text, opening.fact_ids) == []
    assert sim.opening(cases[0]).text == "Hello, doctor. I'm here because of double vision."
    assert "my baby son" in sim.opening(cases[2]).text  # an 8-month-old: the parent speaks


def test_script_never_leaks_and_discloses_only_relevant_facts(cases, replies):
    for case in cases:
        by_id = {f.id: f for f in case.history}
        for q, relevant in SCRIPT.items():
            r = replies[case.case_id, q]
            assert_no_leak(case, r.text)
            assert not r.end and len(r.fact_ids) <= 2
            if relevant is None:
                assert r.fact_ids == [] and "test me" in r.text, (case.case_id, q, r.text)
            for fid in r.fact_ids:
                assert relevant(by_id[fid]), f"{case.case_id} {q!r} disclosed {fid}: {by_id[fid].text!r}"
            assert check_reply(case, r.text, r.fact_ids, question=q) == [], (case.case_id, q, r.text)


def test_script_answers_what_the_cases_hold(cases, replies):
    # passivity is not silence: where a case states the answer, the patient gives it
    def answered(q):
        return sum(bool(replies[c.case_id, q].fact_ids) for c in cases)

    assert answered("When did this start?") >= 95
    assert answered("Do you smoke?") >= 50
    assert answered("Are you taking any medications?") >= 25
    r = replies["agentclinic_medqa-0000", "Do you smoke?"]
    assert (r.text, r.fact_ids) == ("I am a non-smoker, I drink wine occasionally.", ["h8"])


def test_unasked_facts_stay_out_of_the_reply(cases, replies):
    for case in cases:
        r = replies[case.case_id, "Do you smoke?"]
        said = set(tokens(r.text))
        for fact in case.history:
            if fact.id in r.fact_ids or fact.category == "social":
                continue
            assert fold(fact.text) not in fold(r.text), (case.case_id, fact.text, r.text)
            own = set(tokens(fact.text)) - said
            if len(own) >= 2:  # a fact with words of its own: none of them may appear
                assert not own & said, (case.case_id, fact.id)


def test_unknown_facts_get_dont_know_and_no_fact_ids(cases, sim):
    for case in cases:
        for q in ("Have you ever been bitten by a snake?", "Do you own a boat?", "Do you have a pet parrot?"):
            r = sim.answer(case, q)
            assert r.fact_ids == [] and r.text in DONT_KNOW, (case.case_id, q, r.text)


def test_negatives_of_the_case_are_reported_as_stated(cases, sim):
    r = sim.answer(cases[0], "Have you had any chest pain?")
    assert r.fact_ids == ["h10"]
    assert r.text == "I haven't had any chest pain, palpitations, shortness of breath, or recent infections."


def test_exam_test_and_age_questions_follow_fixed_rules(cases, sim):
    for q in ("Let me examine your eyes.", "What is your blood pressure?"):
        assert sim.answer(cases[0], q) == PatientReply("You'd have to examine me for that, doctor.")
    assert sim.answer(cases[3], "Did you get any blood work done?").text.startswith("You'd have to test me")
    # the age is known to the patient: it comes from the demographics, not from a checklist fact
    assert sim.answer(cases[0], "How old are you?") == PatientReply("I'm a 35-year-old female.")
    assert sim.answer(cases[2], "How old is he?").text == "My son is an 8-month-old boy."


def test_replies_are_deterministic(cases, replies):
    fresh = PatientSimulator()
    for case in cases:
        for q in SCRIPT:
            assert fresh.answer(case, q) == replies[case.case_id, q]


def test_repeated_topic_question_moves_on_to_undisclosed_facts(cases, sim):
    case = next(c for c in cases if c.case_id == "agentclinic_medqa-0020")  # seven medications
    t = Transcript(case.case_id)
    seen: list[str] = []
    for _ in range(3):
        t.add("doctor", "Are you taking any medications?", "inquiry")
        r = asyncio.run(sim.reply(case, t, "Are you taking any medications?"))
        t.add("patient", r.text, "inquiry", meta={"facts": r.fact_ids})
        assert not set(r.fact_ids) & set(seen)
        seen += r.fact_ids
    assert len(seen) == 6


def test_first_person_rewrite():
    assert first_person("She denies any recent trauma or infections.", "self") == (
        "I haven't had any recent trauma or infections."
    )
    assert first_person("He takes insulin glargine, metformin, and naproxen.", "self") == (
        "I take insulin glargine, metformin, and naproxen."
    )
    assert first_person("Insulin", "self", "medication") == "I take insulin."
    assert first_person("The patient has been very fussy.", "child:male") == "My son has been very fussy."


# --- termination gate and interruptions ----------------------------------------------------------


def test_gate_ends_on_a_diagnosis_or_goodbye(cases, sim):
    case = cases[0]
    for q, reason in [("You have myasthenia gravis.", "diagnosis"), ("Goodbye", "goodbye"),
                      ("I think this is an autoimmune disease.", "diagnosis"),
                      ("Thank you. The diagnosis is ocular myopathy.", "diagnosis"),
                      ("That's all for today, take care.", "goodbye")]:  # fmt: skip
        r = asyncio.run(sim.reply(case, None, q))
        assert (r.end, r.reason) == (True, reason), q
        assert r.fact_ids == []
    for q in ("Do you have double vision?", "You have been very helpful. When did it start?",
              "Could this be myasthenia gravis?", "You have to tell me: do you smoke?",
              "You have a fever, I see."):  # fmt: skip
        assert termination_gate(q, case) is None, q
        assert not asyncio.run(sim.reply(case, None, q)).end


def test_gate_ends_the_inquiry_in_an_episode(cases, sim):
    case = cases[0]
    lines = iter(["When did this start?", "Do you smoke?", "You have myasthenia gravis."])

    async def doctor(messages):
        from m3.clinic.episode import DoctorReply

        return DoctorReply(next(lines))

    t = Transcript(case.case_id)
    asyncio.run(run_inquiry(case, t, doctor, sim, EpisodeConfig(interruption_rate=0.0), random.Random(0)))
    assert t.ended_by == "gate:diagnosis"
    patient = [turn for turn in t.turns if turn.role == "patient"]
    assert [turn.meta["facts"] for turn in patient] == [["h2", "h3"], ["h8"], []]


def test_interruptions_end_in_an_anxious_question(cases, sim):
    assert len(INTERRUPTIONS) >= 8 and len(PARENT_INTERRUPTIONS) >= 8
    assert all(s.endswith("?") for s in INTERRUPTIONS + PARENT_INTERRUPTIONS)
    picks = {sim.interruption(cases[0], random.Random(seed)) for seed in range(40)}
    assert picks <= set(INTERRUPTIONS) and len(picks) >= 5
    assert sim.interruption(cases[2], random.Random(1)) in PARENT_INTERRUPTIONS
    assert sim.interruption(cases[0], random.Random(7)) == sim.interruption(cases[0], random.Random(7))


# --- the factual check ---------------------------------------------------------------------------


def test_check_reply_catches_leaks_volunteering_contradictions_and_results(cases):
    case = cases[0]
    assert check_reply(case, "I've had double vision for about a month.", ["h2"]) == []
    assert check_reply(case, "Maybe it is myasthenia?", [])[0].startswith("diagnosis_leak")
    assert check_reply(case, "My blood tests came back elevated.", [])[0].startswith("test_result")
    assert any(p.startswith("exam_finding") for p in check_reply(case, "My heart rate is 72 bpm.", []))
    volunteered = check_reply(case, "Yes, and I work as a graphic designer.", [], question="Any fever?")
    assert volunteered and volunteered[0].startswith("volunteered: h9")
    flipped = check_reply(case, "I have chest pain and palpitations.", ["h10"])
    assert flipped and flipped[0].startswith("contradiction: h10")
    assert check_reply(case, "Fine.", ["h99"]) == ["unknown_fact_id: h99"]


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="backend"):
        SimulatorConfig(backend="gpt")
    with pytest.raises(ValueError, match="model="):
        SimulatorConfig(backend="openai")
    with pytest.raises(ValueError, match="max_facts"):
        SimulatorConfig(max_facts=0)


# --- LLM backend through the fake OpenAI server --------------------------------------------------

LEAK = json.dumps({"reply": "I think I have myasthenia gravis.", "fact_ids": []})
VALID = json.dumps({"reply": "I've had double vision for about a month.", "fact_ids": ["h2"]})


def _llm_reply(srv, case, question, transcript=None):
    cfg = SimulatorConfig(backend="openai", model="fake-model", base_url=srv.base_url)
    sim = PatientSimulator(cfg)

    async def main():
        try:
            return await sim.reply(case, transcript, question)
        finally:
            await sim.aclose()

    return asyncio.run(main()), sim.stats


def test_llm_leak_is_retried_once_then_replaced_by_the_offline_answer(cases, sim):
    case = cases[0]
    with FakeOpenAIServer(responder=lambda request: LEAK) as srv:
        reply, stats = _llm_reply(srv, case, "When did this start?")
        prompts = [json.dumps(r["messages"]) for r in srv.requests]
    assert srv.request_count == 2 and (stats.llm_retries, stats.fallbacks, stats.llm_replies) == (1, 1, 0)
    assert reply == sim.answer(case, "When did this start?")
    assert "diagnosis_leak" in prompts[1]  # the re-ask names the problem
    # the model is never told what it must not say (prompts[1] quotes its own bad answer back)
    assert not any(w in prompts[0].lower() for w in ("myasthenia", "acetylcholine", "72 bpm"))


def test_llm_valid_reply_passes_and_a_fixed_retry_is_kept(cases):
    case = cases[0]
    with FakeOpenAIServer(responder=lambda request: VALID) as srv:
        reply, stats = _llm_reply(srv, case, "How long have you had double vision?")
    assert (reply.text, reply.fact_ids, srv.request_count) == (
        "I've had double vision for about a month.",
        ["h2"],
        1,
    )
    assert (stats.llm_replies, stats.fallbacks) == (1, 0)
    with FakeOpenAIServer(responder=lambda request: VALID, faults=[Fault.content(LEAK)]) as srv:
        reply, stats = _llm_reply(srv, case, "How long have you had double vision?")
    assert reply.fact_ids == ["h2"] and (stats.llm_retries, stats.fallbacks) == (1, 0)


def test_llm_unknown_fact_ids_are_reasked_and_rules_skip_the_llm(cases):
    case = cases[0]
    bad_ids = json.dumps({"reply": "About a month.", "fact_ids": ["h99"]})
    with FakeOpenAIServer(responder=lambda request: VALID, faults=[Fault.content(bad_ids)]) as srv:
        reply, _ = _llm_reply(srv, case, "How long have you had double vision?")
        assert reply.fact_ids == ["h2"] and srv.request_count == 2
        srv.reset_stats()
        exam, _ = _llm_reply(srv, case, "Let me examine you.")
        gate, _ = _llm_reply(srv, case, "You have myasthenia gravis.")
        assert srv.request_count == 0  # exam requests and the gate never reach the model
    assert exam.text.startswith("You'd have to examine me") and gate.end
