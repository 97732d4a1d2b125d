"""Claim verifiers: the offline heuristic verifier on hand-labelled claims, the LLM verifier on a fake endpoint.

Run: .venv/bin/python -m pytest tests/m3/facts/test_verify.py -q -s    (-s prints the confusion table)

The labelled claims were written from the guideline digests shipped in open-medicine (the passage a
claim paraphrases, negates or alters is named in the comment before each group). Three sets:
  DEV   - the offline verifier's thresholds and lexicons were chosen while looking at these;
  HELD  - written before its first run (18/26 right then); the generic bugs it exposed were fixed;
  FRESH - written after those fixes and run once: 21/24 right; two lexicon gaps it exposed
          (superior/inferior, pre/post) were then added.
So only the first-run figures (69% and 88%) are unbiased estimates; the assert uses today's level.
Over the full 43-guideline corpus (more distractors, not run here: encoding it takes minutes) the
same 82 claims scored 79/82 when this was written.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter

import pytest

from m3.facts.corpus import load_guideline_corpus
from m3.facts.retrieval import CallableRetriever, HybridRetriever
from m3.facts.types import LABELS, Passage
from m3.facts.verify import (
    OfflineVerifier,
    OfflineVerifierConfig,
    OpenAIVerifier,
    VerificationError,
    contrast_conflict,
    normalize_dosing,
    numbers_stated,
    polarity_conflict,
    quantity_conflict,
)
from m3.llm import LLMConfig
from tests.fakes.openai_server import FakeOpenAIServer, Fault

SUBSET = [  # same list as test_corpus_retrieval.py, so the cached embeddings are shared
    "acc_aha_af_2023", "kdigo_ckd_2024", "wells_pe_2000", "bts_cap_2009", "gold_copd_2024", "sepsis3_2016",
    "ash_vte_2020", "timi_ua_nstemi_2000", "aha_asa_stroke_2019", "acc_aha_ascvd_2013",
]  # fmt: skip
S, R, U = "Supported", "Refuted", "Uncertain"

DEV = [
    # acc_aha_af_2023 anticoagulation / rate control: paraphrases
    ("Direct oral anticoagulants are preferred over warfarin for stroke prevention in patients with atrial fibrillation.", S),
    ("The standard dose of apixaban in atrial fibrillation is 5 mg twice daily.", S),
    ("When warfarin is used in AF, the target INR is 2.0 to 3.0.", S),
    ("In men with atrial fibrillation, oral anticoagulation is recommended when the CHA2DS2-VASc score is 2 or higher.", S),
    ("A high bleeding risk does not contraindicate anticoagulation in atrial fibrillation.", S),
    ("Non-dihydropyridine calcium channel blockers are contraindicated in AF patients with HFrEF.", S),
    # wells_pe_2000, sepsis3_2016, bts_cap_2009, gold_copd_2024, kdigo_ckd_2024
    ("A negative D-dimer safely excludes pulmonary embolism when PE is unlikely by the Wells score.", S),
    ("CT pulmonary angiography is the first-line imaging test for suspected pulmonary embolism.", S),
    ("Sepsis is defined as life-threatening organ dysfunction caused by a dysregulated host response to infection.", S),
    ("Septic shock requires vasopressors to keep mean arterial pressure at or above 65 mmHg.", S),
    ("For low-severity community-acquired pneumonia, amoxicillin 500 mg three times daily for 5 days is first-line.", S),
    ("COPD is confirmed when the post-bronchodilator FEV1/FVC ratio is below 0.70.", S),
    ("SGLT2 inhibitors can be started in CKD when eGFR is at least 20 mL/min/1.73m².", S),
    # the same passages, negation flipped
    ("A high bleeding risk contraindicates anticoagulation in patients with atrial fibrillation.", R),
    ("In patients in whom PE is likely by the Wells score, D-dimer testing is recommended.", R),
    ("ICS monotherapy is recommended in COPD.", R),
    ("Bleeding risk scores such as HAS-BLED should be used in isolation to decide eligibility for oral anticoagulation.", R),
    ("Digoxin should be used as monotherapy for rate control in atrial fibrillation.", R),
    # the same passages, a number changed (dose, range, threshold)
    ("The standard dose of apixaban in atrial fibrillation is 10 mg twice daily.", R),
    ("When warfarin is used in AF, the target INR is 3.0 to 4.0.", R),
    ("In men with atrial fibrillation, oral anticoagulation is recommended when the CHA2DS2-VASc score is 4 or higher.", R),
    ("Septic shock requires vasopressors to keep mean arterial pressure at or above 80 mmHg.", R),
    ("The threshold for sepsis is an acute increase in the SOFA score of 4 points or more.", R),
    ("Rivaroxaban should be reduced to 15 mg once daily if creatinine clearance is 80 mL/min or less.", R),
    ("Amoxicillin 250 mg three times daily for 5 days is first-line for low-severity community-acquired pneumonia.", R),
    # off-topic, or on-topic but not stated anywhere in the digests
    ("Vitamin C supplements prevent the common cold in marathon runners.", U),
    ("Isotretinoin is the first-line treatment for severe nodular acne.", U),
    ("Melatonin improves sleep onset in jet lag.", U),
    ("Cataract surgery is typically performed under local anesthesia.", U),
    ("Children should receive the MMR vaccine at 12 to 15 months of age.", U),
    ("Apixaban should be taken with grapefruit juice to improve its absorption.", U),
    ("Dabigatran is the best tolerated anticoagulant in elderly patients.", U),
]  # fmt: skip

HELD = [
    # aha_asa_stroke_2019, timi_ua_nstemi_2000, bts_cap_2009, acc_aha_ascvd_2013, sepsis3_2016, kdigo_ckd_2024
    ("The alteplase dose for acute ischemic stroke is 0.9 mg/kg, with a maximum of 90 mg.", S),
    ("Blood pressure must be below 185/110 mmHg before alteplase is given.", S),
    ("IV alteplase should not be delayed while waiting for thrombectomy evaluation.", S),
    ("In the TIMI risk score, one point is given for aspirin use in the past 7 days.", S),
    ("A CURB-65 score of 3 to 5 indicates high-risk pneumonia that should be managed with urgent hospital admission.", S),
    ("Statin therapy is generally not indicated when the 10-year ASCVD risk is below 5%.", S),
    ("Patients with an LDL-C of 190 mg/dL or higher require high-intensity statin therapy.", S),
    ("A qSOFA respiratory rate criterion is 22 breaths per minute or more.", S),
    ("CKD is defined by kidney abnormalities present for more than 3 months.", S),
    ("Patients with an eGFR below 30 mL/min/1.73m² should be referred to nephrology.", S),
    ("IV alteplase should be withheld while awaiting thrombectomy evaluation.", R),
    ("A negative D-dimer cannot exclude pulmonary embolism in patients in whom PE is unlikely.", R),
    ("Statin therapy is indicated for all patients whose 10-year ASCVD risk is below 5%.", R),
    ("Thrombectomy cannot be performed without prior IV thrombolysis.", R),
    ("Clopidogrel is the first-line P2Y12 inhibitor in intermediate-risk UA/NSTEMI.", R),
    ("The alteplase dose for acute ischemic stroke is 0.6 mg/kg.", R),
    ("Blood pressure should be kept below 140/90 mmHg for the first 24 hours after alteplase.", R),
    ("The standard time window for IV alteplase is onset-to-needle within 6 hours.", R),
    ("CKD is defined by kidney abnormalities present for more than 6 months.", R),
    ("A qSOFA respiratory rate criterion is 30 breaths per minute or more.", R),
    ("In the TIMI risk score for UA/NSTEMI, age 75 years or older earns one point.", R),
    ("Zinc lozenges shorten the duration of the common cold.", U),
    ("Laser trabeculoplasty is a first-line option for open-angle glaucoma.", U),
    ("Probiotics reduce the risk of antibiotic-associated diarrhoea in children.", U),
    ("Ticagrelor should be taken with a high-fat meal to increase absorption.", U),
    ("Alteplase is more effective in women than in men.", U),
]  # fmt: skip

FRESH = [
    # acc_aha_af_2023 rhythm/rate control, ash_vte_2020, bts_cap_2009 discharge, gold_copd_2024 ABE
    ("If AF has lasted more than 48 hours, anticoagulate for at least 3 weeks before cardioversion or perform TEE.", S),
    ("Oral anticoagulation should be continued for at least 4 weeks after cardioversion.", S),
    ("Amiodarone is the most effective antiarrhythmic drug for maintaining sinus rhythm.", S),
    ("Catheter ablation does not eliminate the need for long-term anticoagulation.", S),
    ("For VTE, a shorter course of anticoagulation of 3 to 6 months is suggested for primary treatment.", S),
    ("Anticoagulation is preferred over aspirin for secondary prevention of VTE.", S),
    ("A chest X-ray follow-up at 6 weeks is arranged after discharge for community acquired pneumonia.", S),
    ("In COPD, high symptom burden is defined as an mMRC score of 2 or more or a CAT score of 10 or more.", S),
    ("Dofetilide requires a 3-day inpatient initiation with continuous ECG monitoring.", S),
    ("Catheter ablation eliminates the need for long-term anticoagulation in atrial fibrillation.", R),
    ("Flecainide can be used in patients with structural heart disease.", R),
    ("Aspirin is superior to anticoagulation for secondary prevention of VTE.", R),
    ("Amiodarone is not safe in patients with HFrEF.", R),
    ("Oral anticoagulation should be continued for at least 8 weeks after cardioversion.", R),
    ("If AF has lasted more than 24 hours, anticoagulation for 3 weeks is needed before cardioversion.", R),
    ("Dofetilide requires a 7-day inpatient initiation with continuous ECG monitoring.", R),
    ("In COPD, high symptom burden is defined as a CAT score of 20 or more.", R),
    ("The recommended primary treatment course of anticoagulation for VTE is 12 to 24 months.", R),
    ("The target heart rate for lenient rate control in AF is below 130 bpm.", R),
    ("Regular sauna use lowers the risk of dementia.", U),
    ("Botulinum toxin injections reduce chronic migraine frequency.", U),
    ("Dronedarone should be taken at bedtime to reduce dizziness.", U),
    ("Catheter ablation is less effective in women than in men.", U),
    ("Rivaroxaban is safe during breastfeeding.", U),
]  # fmt: skip

LABELLED = (
    [(c, g, "dev") for c, g in DEV] + [(c, g, "held") for c, g in HELD] + [(c, g, "fresh") for c, g in FRESH]
)


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> HybridRetriever:
    cache = tmp_path_factory.getbasetemp() / "m3-corpus-cache"  # shared with test_corpus_retrieval.py
    return HybridRetriever(load_guideline_corpus(SUBSET, cache_dir=cache))


@pytest.fixture(scope="module")
def offline(retriever) -> OfflineVerifier:
    return OfflineVerifier(retriever)


@pytest.fixture(scope="module")
def verdicts(offline):
    return asyncio.run(offline.verify([c for c, _, _ in LABELLED]))  # one batch: one encoding call


def test_offline_accuracy_on_hand_labelled_claims(verdicts):
    assert len(LABELLED) >= 20 and Counter(g for _, g, _ in LABELLED).keys() == set(LABELS)
    table = Counter((g, v.label) for (_, g, _), v in zip(LABELLED, verdicts, strict=True))
    print("\noffline verifier, rows = gold, columns = predicted")
    print(f"{'':>10}" + "".join(f"{lab:>11}" for lab in LABELS))
    for gold in LABELS:
        print(f"{gold:>10}" + "".join(f"{table[gold, pred]:>11}" for pred in LABELS))
    per_set = {}
    for name in ("dev", "held", "fresh"):
        rows = [(g, v.label) for (_, g, s), v in zip(LABELLED, verdicts, strict=True) if s == name]
        per_set[name] = sum(g == p for g, p in rows) / len(rows)
    accuracy = sum(table[g, g] for g in LABELS) / len(LABELLED)
    print(f"accuracy {accuracy:.3f} over {len(LABELLED)} claims; per set {per_set}")
    for (claim, gold, _), v in zip(LABELLED, verdicts, strict=True):
        if v.label != gold:
            print(f"  MISS gold={gold} got={v.label}: {claim}  <- {v.rationale[:140]}")
    assert accuracy >= 0.9  # measured 78/82 = 0.95 when written
    assert per_set["dev"] >= 0.9


def test_obvious_flips_and_number_changes_are_refuted_with_evidence(verdicts, retriever):
    by_claim = {c: v for (c, _, _), v in zip(LABELLED, verdicts, strict=True)}
    v = by_claim["The standard dose of apixaban in atrial fibrillation is 10 mg twice daily."]
    assert v.label == R and "quantity 10 mg vs 5 mg" in v.rationale
    v = by_claim["A high bleeding risk contraindicates anticoagulation in patients with atrial fibrillation."]
    assert (
        v.label == R and v.evidence_ids == ["acc_aha_af_2023#anticoagulation#3"] and "negation" in v.rationale
    )
    v = by_claim[
        "Sepsis is defined as life-threatening organ dysfunction caused by a dysregulated host response to infection."
    ]
    assert v.label == S and v.evidence_ids[0].startswith("sepsis3_2016#") and v.confidence > 0.9
    v = by_claim["Melatonin improves sleep onset in jet lag."]
    assert v.label == U and len(v.evidence_ids) == 5  # everything that was checked
    for v in verdicts:
        assert (
            0.0 <= v.confidence <= 1.0 and v.rationale and v.verifier == f"offline-nli-v1+{retriever.version}"
        )
        assert all(retriever.corpus.get(i) for i in v.evidence_ids)


def test_offline_version_and_input_checks(offline, retriever):
    assert offline.name == "offline" and offline.version == f"offline-nli-v1+{retriever.corpus.version}"
    other = OfflineVerifier(retriever, OfflineVerifierConfig(support_threshold=0.7))
    assert other.version != offline.version and other.version.endswith("+" + retriever.version)
    assert asyncio.run(offline.verify([])) == []
    with pytest.raises(ValueError, match="list of claim strings"):
        asyncio.run(offline.verify("a claim"))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OfflineVerifierConfig(support_threshold=1.5)


def test_premise_checks():
    assert quantity_conflict("Apixaban 10 mg twice daily", "Apixaban: 5 mg BID") == "10 mg vs 5 mg"
    assert quantity_conflict("Apixaban 5000 mcg twice daily", "Apixaban: 5 mg BID") is None  # same dose
    assert quantity_conflict("score of 4 or more", "score >= 2 in the 2023 guideline").startswith(
        "4 not among 2"
    )
    assert quantity_conflict("CURB-65 score of 3", "CURB-65 score 3-5") is None  # "65" is a name
    assert contrast_conflict(
        "SGLT2 inhibitors increase HF hospitalization", "SGLT2i reduce HF hospitalization"
    )
    # "or higher" is a comparator of a number, not a direction of effect
    assert contrast_conflict("score of 2 or higher", "reduce stroke risk when score >= 2") is None
    assert polarity_conflict(
        "ICS monotherapy is recommended in COPD", "ICS monotherapy is not recommended in COPD"
    )
    assert not polarity_conflict("Do not stop apixaban", "Apixaban should not be stopped")
    assert numbers_stated("Give 1 mg/kg", "NICE Recommendation 1.1.1: give 1 mg/kg")  # dotted section number
    assert not numbers_stated("Give 2 mg/kg", "NICE Recommendation 1.1.1: give 1 mg/kg")
    assert (
        normalize_dosing("Amoxicillin 500 mg TDS for a 5-day course")
        == "Amoxicillin 500 mg three times daily for a 5 day course"
    )


# --- LLM verifier ----------------------------------------------------------------------------

PASSAGES = [
    Passage(
        "af#anticoagulation#0",
        "Apixaban: Standard dose is 5 mg BID.",
        "af",
        "anticoagulation",
        "AF guideline",
    ),
    Passage(
        "af#anticoagulation#1", "Warfarin target INR is 2.0-3.0.", "af", "anticoagulation", "AF guideline"
    ),
]


def fixed_retriever() -> CallableRetriever:
    return CallableRetriever(lambda claim: PASSAGES, version="fixed-v1")


def llm_cfg(srv: FakeOpenAIServer) -> LLMConfig:
    return LLMConfig(
        model="fake-model", base_url=srv.base_url, timeout_s=5, backoff_base_s=0.01, backoff_max_s=0.02
    )


def scripted(request: dict) -> str:
    """A 'model' that reads the claim out of the prompt and answers by a fixed rule."""
    claim = re.search(r"# Claim\n(.*)\n", request["messages"][1]["content"]).group(1)
    label = S if "5 mg" in claim else R if "10 mg" in claim else U
    ids = ["af#anticoagulation#0"] if label != U else []
    return json.dumps({"label": label.lower(), "evidence_ids": ids, "rationale": f"rule for {claim}"})


def test_openai_verifier_prompt_labels_and_version():
    claims = ["Apixaban is 5 mg twice daily.", "Apixaban is 10 mg twice daily.", "Aspirin cures colds."]
    with FakeOpenAIServer(responder=scripted) as srv:
        verifier = OpenAIVerifier(fixed_retriever(), llm_cfg(srv), k=2)
        got = asyncio.run(verifier.verify(claims))
    assert [v.label for v in got] == [S, R, U]
    assert got[0].evidence_ids == ["af#anticoagulation#0"] and got[2].evidence_ids == []
    assert all(v.verifier == verifier.version for v in got)
    assert verifier.version == "openai-fake-model-verify-prompt-v1-k2+fixed-v1"
    prompt = srv.requests[0]["messages"][1]["content"]
    for p in PASSAGES:  # every passage shown, with its id, title and section
        assert f"[{p.id}] AF guideline — anticoagulation\n{p.text}" in prompt
    assert srv.request_count == 3


def test_openai_verifier_reasks_on_unknown_evidence_id_and_bad_label():
    bad_id = json.dumps({"label": "Supported", "evidence_ids": ["made#up#1"], "rationale": "x"})
    bad_label = json.dumps({"label": "True", "evidence_ids": [], "rationale": "x"})
    with FakeOpenAIServer(
        responder=scripted, faults=[Fault.content(bad_id), Fault.content(bad_label)]
    ) as srv:
        verifier = OpenAIVerifier(fixed_retriever(), llm_cfg(srv))
        (v,) = asyncio.run(verifier.verify(["Apixaban is 5 mg twice daily."]))
    assert v.label == S and v.evidence_ids == ["af#anticoagulation#0"]
    assert srv.request_count == 3
    second = srv.requests[1]["messages"]
    assert second[-2]["content"] == bad_id and "made#up#1" in second[-1]["content"]
    assert "were not among the passages shown" in second[-1]["content"]
    assert "label must be one of" in srv.requests[2]["messages"][-1]["content"]


def test_openai_verifier_failures_raise_with_partial_verdicts():
    with FakeOpenAIServer(responder=scripted, faults=[Fault.http(400)]) as srv:
        verifier = OpenAIVerifier(fixed_retriever(), llm_cfg(srv))
        with pytest.raises(VerificationError, match="1 of 2 claims failed") as err:
            asyncio.run(verifier.verify(["Apixaban is 5 mg twice daily.", "Apixaban is 5 mg BID."]))
    assert sum(v is None for v in err.value.verdicts) == 1
    assert [v.label for v in err.value.verdicts if v is not None] == [S]
    empty = CallableRetriever(lambda claim: [], version="empty")
    with FakeOpenAIServer(responder=scripted) as srv:
        (v,) = asyncio.run(OpenAIVerifier(empty, llm_cfg(srv)).verify(["Anything at all."]))
        assert v.label == U and srv.request_count == 0  # no evidence: no call
