"""Clinical cases: loading AgentClinic MedQA/NEJM and our format, checklist, tests, errors, round trip."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from m3.clinic.agentclinic import parse_demographics
from m3.clinic.case_files import load_cases, read_cases, save_cases
from m3.clinic.cases import ClinicalCase, Demographics, Finding, HistoryFact
from m3.clinic.catalogue import CATALOGUE, CATEGORY_IDS, category
from m3.clinic.checklist import derive_checklist, red_flags, split_facts
from m3.clinic.labs import TestResult, categorize_test, essential_reason
from m3.config import REPO_ROOT

DATA = Path(__file__).resolve().parents[3] / "data" / "agentclinic_medqa.jsonl"


@pytest.fixture(scope="module")
def cases():
    return load_cases(DATA)


def _write(tmp_path, *lines, name="cases.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _medqa_record():
    return json.loads(DATA.read_text(encoding="utf-8").splitlines()[0])


# --- the sample file -------------------------------------------------------------------------------


def test_all_107_sample_cases_load(cases):
    assert len(cases) == 107
    assert len({c.case_id for c in cases}) == 107
    assert cases[0].case_id == "agentclinic_medqa-0000" and cases[106].case_id == "agentclinic_medqa-0106"
    assert [i for i, c in enumerate(cases) if not c.test_results] == [68, 105]  # empty Test_Results upstream
    for c in cases:
        assert c.chief_complaint and c.diagnosis.text and c.exam_findings
        assert [f.id for f in c.history] == [f"h{i}" for i in range(1, len(c.history) + 1)]
        assert c.history[0].category == "chief_complaint" and c.history[0].criticality == 2
        assert all(t.category in CATEGORY_IDS or t.category == "other" for t in c.test_results)


def test_case0_hand_checked_history(cases):
    c = cases[0]
    assert c.demographics == Demographics(35, "female", "35-year-old female")
    assert c.chief_complaint == "Double vision"
    assert c.objective.startswith("Assess and diagnose the patient presenting with double vision")
    got = [(f.id, f.category, f.criticality, f.text) for f in c.history]
    assert got == [
        ("h1", "chief_complaint", 2, "Double vision"),
        ("h2", "hpi", 2, "The patient reports a 1-month history of experiencing double vision (diplopia), "
         "difficulty in climbing stairs, and weakness when trying to brush her hair."),
        ("h3", "hpi", 2, "She notes that these symptoms tend to worsen after physical activity but improve "
         "significantly after a few hours of rest."),
        ("h4", "symptom", 2, "Difficulty climbing stairs"),
        ("h5", "symptom", 2, "Weakness in upper limbs"),
        ("h6", "symptom", 2, "Improvement of symptoms after rest"),
        ("h7", "past_medical", 1, "No significant past medical history."),
        ("h8", "social", 1, "Non-smoker, drinks wine occasionally."),
        ("h9", "social", 1, "Works as a graphic designer."),
        # denied chest pain / dyspnoea: a pertinent negative, not a red flag
        ("h10", "ros", 1, "Patient denies experiencing any chest pain, palpitations, shortness of breath, "
         "or recent infections."),
    ]  # fmt: skip
    diplopia = [f for f in c.history if "diplopia" in f.text]
    assert diplopia and all(f.criticality == 2 for f in diplopia)
    assert (c.diagnosis.icd10, c.diagnosis.icd10_title, c.diagnosis.match) == (
        "G70.0",
        "Myasthenia gravis",
        "exact",
    )
    assert c.exam_findings[0] == Finding("Vital Signs", "Temperature", "36.6°C (97.9°F)")
    assert (
        c.exam_findings[4].system == "Neurological Examination"
        and c.exam_findings[4].name == "Cranial Nerves"
    )


def test_case0_tests_categorised_and_marked(cases):
    assert cases[0].test_results == [
        TestResult(
            "autoantibodies", "Blood Tests / Acetylcholine Receptor Antibodies", "Present (elevated)", True
        ),
        TestResult(
            "emg_ncs",
            "Electromyography / Findings",
            "Decreased muscle response with repetitive stimulation",
            True,
        ),
        TestResult(
            "ct_chest", "Imaging / Chest CT / Findings", "Normal, no thymoma or other masses detected.", False
        ),
    ]


def test_checklist_is_deterministic(cases):
    again = load_cases(DATA)
    assert [c.history for c in again] == [c.history for c in cases]
    for c in cases[:20]:
        assert derive_checklist(c) == c.history


def test_checklist_splits_lists_and_drops_placeholders(cases):
    c25 = cases[25]  # PMH "Hypertension, Ulcerative Colitis", medications given as a list
    assert [(f.category, f.text) for f in c25.history if f.category in ("past_medical", "medication")] == [
        ("past_medical", "Hypertension"),
        ("past_medical", "Ulcerative Colitis"),
        ("medication", "Lisinopril"),
        ("medication", "Rectal Mesalamine"),
    ]
    c1 = cases[1]  # "Information not provided." / "No additional symptoms provided." are not facts
    assert not [f for f in c1.history if f.category in ("social", "ros")]
    pmh = [f for f in c1.history if f.category == "past_medical"]
    assert len(pmh) == 1 and pmh[0].criticality == 2  # natalizumab -> immunosuppression red flag


def test_red_flags_and_negation():
    assert red_flags("Denies chest pain, palpitations, or shortness of breath.") == []
    assert red_flags("Reports chest pain but denies syncope.") == ["chest pain"]
    assert red_flags("She coughed up blood and lost 5 kg of weight.") == ["hemoptysis", "weight loss"]
    assert red_flags("High fever with a stiff neck.") == ["neck stiffness", "fever with danger signs"]
    assert red_flags("Fever for two days.") == []
    assert split_facts("Hypertension, Ulcerative Colitis", as_list=True) == [
        "Hypertension",
        "Ulcerative Colitis",
    ]
    assert split_facts("Denies fever, rash, or recent illnesses.", as_list=True) == [
        "Denies fever, rash, or recent illnesses."
    ]
    assert split_facts("Information not provided. N/A") == []


@pytest.mark.parametrize(
    "text, age, sex",
    [
        ("Newborn, 3050-g (6-lb 12-oz) male, six hours post delivery", 0, "male"),
        ("8-month-old boy", 0, "male"),
        ("70-year-old man accompanied by his wife", 70, "male"),
        ("32-year-old woman, gravida 2, para 1, at 38 weeks' gestation", 32, "female"),
        ("3-year-old child", 3, None),
        ("Newborn, female", 0, "female"),
    ],
)
def test_demographics(text, age, sex):
    d = parse_demographics(text)
    assert (d.age, d.sex) == (age, sex)


# --- tests catalogue -------------------------------------------------------------------------------


def test_catalogue_has_38_distinct_categories():
    assert len(CATALOGUE) == len(set(CATEGORY_IDS)) == 38
    assert category("ct_chest").title == "CT chest"
    with pytest.raises(ValueError, match="valid ids"):
        category("ct_toe")


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("Urinalysis / WBC", "0-5 /HPF", "urinalysis"),  # the panel decides, not the analyte
        ("Complete Blood Count / WBC", "7,000 /μL", "cbc"),
        ("Lumbar Puncture / CSF Glucose", "64 mg/dL", "csf"),
        ("Imaging / MRI Brain / Findings", "", "mri_brain"),
        ("Doppler Ultrasound Lower Limb / Findings", "", "doppler"),
        ("X-Ray Knee / Findings", "", "other_imaging"),
        ("Chest X-ray / Findings", "", "cxr"),
        ("CA-125 / Level", "Normal", "tumor_markers"),
        ("Infectious Disease Testing / Hepatitis A IgG Antibody", "Positive", "infectious_serology"),
        ("Head Imaging / Findings", "", "other_imaging"),  # weak keyword only
        ("Complete Blood Count / Other Findings", "Blood smear shows...", "cbc"),
        ("Special Test / Findings", "Blood smear shows increased platelets.", "cbc"),  # value fallback
        ("Vital Signs / Temperature", "102°F (38.9°C)", "other"),
    ],
)
def test_categorize_test(name, value, expected):
    assert categorize_test(name, value) == expected


@pytest.mark.parametrize(
    "name, value, category, expected",
    [
        ("Complete Blood Count / WBC", "Pending", "cbc", (False, "unavailable")),
        ("Serum / Na", "122 mEq/L", "bmp", (True, "sodium 122 outside 135-145")),
        ("Serum / Sodium", "140 mmol/L", "bmp", (False, "sodium 140 within 135-145")),
        ("Complete Blood Count / WBC", "13,400/mm3", "cbc", (True, "wbc 13400 outside 4000-11000")),
        ("Reticulocyte Count", "0.8% (normal range: 2-6%)", "cbc", (True, "0.8 outside 2-6 stated")),
        (
            "Joint Aspiration / Gram Stain",
            "Gram-negative diplococci seen",
            "csf",
            (True, "flag 'diplococci'"),
        ),
        ("Wound Culture / Findings", "No growth of pathogenic bacteria", None, (False, "no abnormal marker")),
        ("Urinalysis / Protein", "1+", "urinalysis", (True, "flag '1+'")),
        ("Urinalysis / WBC", "12–16/hpf", "urinalysis", (True, "wbc 12 outside 0-5")),
    ],
)
def test_essential_rules(name, value, category, expected):
    assert essential_reason(name, value, None, category) == expected


def test_confirmatory_test_is_essential_even_without_a_flag():
    value = "A transition zone in the distal colon, compatible with Hirschsprung disease"
    assert essential_reason("Barium Enema / Findings", value, "Hirschsprung disease") == (
        True,
        "names the diagnosis",
    )


# --- NEJM format -----------------------------------------------------------------------------------

NEJM = {
    "image_url": "https://example.org/nejm/IC0001.jpg",
    "question": "A 28-year-old woman presented to the hospital with a 6-month history of dry cough. "
    "She was a lifetime nonsmoker. On physical examination, auscultation of both lower lungs revealed fine "
    "crackles. What is the most likely diagnosis?",
    "patient_info": "For your role as a patient, you need to convey the following: - You are a 28-year-old woman. "
    "- You have been experiencing a dry cough for the past 6 months. - You have never smoked in your life. "
    "- You have not had any fevers, joint aches, eye pain, or rashes. "
    "Remember, you are not aware of your diagnosis or the results of any tests.",
    "physical_exams": "Imaging: - High-resolution CT of the chest: Mediastinal lymphadenopathy and diffuse "
    "ground-glass opacities. - Transbronchial lung biopsy: Multiple noncaseating granulomas. "
    "- Bronchoalveolar lavage cultures: Negative for infectious organisms.",
    "answers": [
        {"text": "Pulmonary alveolar proteinosis", "correct": False},
        {"text": "Pulmonary Sarcoidosis", "correct": True},
    ],
}


def test_nejm_record_loads(tmp_path):
    path = _write(tmp_path, json.dumps(NEJM), name="agentclinic_nejm.jsonl")
    [c] = load_cases(path)
    assert (c.case_id, c.source) == ("agentclinic_nejm-0000", "agentclinic_nejm")
    assert c.demographics == Demographics(28, "female", "28-year-old woman")
    assert c.chief_complaint == "dry cough"
    assert c.objective == "What is the most likely diagnosis?"
    assert (c.diagnosis.text, c.diagnosis.icd10, c.diagnosis.match) == (
        "Pulmonary Sarcoidosis",
        "D86.0",
        "lexical",
    )
    # the actor's instructions ("For your role...", "Remember, ...") are not facts
    assert [f.text for f in c.history] == [
        "dry cough",
        "You are a 28-year-old woman.",
        "You have been experiencing a dry cough for the past 6 months.",
        "You have never smoked in your life.",
        "You have not had any fevers, joint aches, eye pain, or rashes.",
    ]
    assert [(t.category, t.essential) for t in c.test_results] == [
        ("ct_chest", True),
        ("biopsy", True),
        ("infectious_serology", False),
    ]
    assert c.test_results[0].name == "Imaging / High-resolution CT of the chest"
    assert c.exam_findings == [
        Finding("General", "Physical examination", NEJM["question"].split(". ")[2] + ".")
    ]
    assert c.metadata["options"] == ["Pulmonary alveolar proteinosis", "Pulmonary Sarcoidosis"]


# --- malformed records (strict=True: the first one fails the file) ----------------------------------


def test_missing_field_names_file_line_and_field(tmp_path):
    rec = _medqa_record()
    del rec["OSCE_Examination"]["Patient_Actor"]["History"]
    path = _write(tmp_path, json.dumps(_medqa_record()), json.dumps(rec))
    with pytest.raises(ValueError) as e:
        load_cases(path, strict=True)
    assert str(e.value).startswith(
        f"{path}:2: field 'OSCE_Examination.Patient_Actor.History' missing (add it"
    )


def test_wrong_type_names_the_field(tmp_path):
    rec = _medqa_record()
    rec["OSCE_Examination"]["Patient_Actor"]["History"] = ["not", "a", "string"]
    with pytest.raises(
        ValueError, match=r":1: field 'OSCE_Examination.Patient_Actor.History' must be a string, got list"
    ):
        load_cases(_write(tmp_path, json.dumps(rec)), strict=True)


def test_invalid_json_and_non_objects(tmp_path):
    with pytest.raises(ValueError, match=r"cases.jsonl:3: invalid JSON"):
        load_cases(_write(tmp_path, json.dumps(_medqa_record()), "", '{"OSCE_Examination": '), strict=True)
    with pytest.raises(ValueError, match=r":1: expected a JSON object, got list"):
        load_cases(_write(tmp_path, "[1, 2]"), strict=True)
    with pytest.raises(ValueError, match=r":1: field '<record>' has an unknown layout \(keys: foo\)"):
        load_cases(_write(tmp_path, '{"foo": 1}'), strict=True)


def test_nejm_needs_exactly_one_correct_answer(tmp_path):
    rec = dict(NEJM, answers=[{"text": "A", "correct": True}, {"text": "B", "correct": True}])
    with pytest.raises(ValueError, match=r":1: field 'answers' has 2 options marked correct"):
        load_cases(_write(tmp_path, json.dumps(rec)), strict=True)


def test_own_format_errors(tmp_path, cases):
    d = cases[0].to_dict()
    d["history"][0]["criticality"] = 3
    with pytest.raises(ValueError, match=r":1: field 'history\[0\].criticality' is 3 \(use 1"):
        load_cases(_write(tmp_path, json.dumps(d)), strict=True)
    d = cases[0].to_dict()
    d["test_results"][0]["essential"] = "yes"
    with pytest.raises(
        ValueError, match=r"field 'test_results\[0\].essential' must be true or false, got str"
    ):
        load_cases(_write(tmp_path, json.dumps(d)), strict=True)
    line = json.dumps(cases[0].to_dict())
    with pytest.raises(ValueError, match=r":2: field 'case_id' 'agentclinic_medqa-0000' repeats line 1"):
        load_cases(_write(tmp_path, line, line), strict=True)


def test_unusable_records_are_skipped_with_line_and_reason(tmp_path):
    rec = _medqa_record()
    del rec["OSCE_Examination"]["Correct_Diagnosis"]
    path = _write(
        tmp_path, json.dumps(_medqa_record()), "{broken", json.dumps(rec), json.dumps(_medqa_record())
    )
    found = read_cases(path)
    assert [c.case_id for c in found.cases] == ["cases-0000", "cases-0003"]  # ids count records, not cases
    assert [line for line, _ in found.skipped] == [2, 3]
    assert "invalid JSON" in found.skipped[0][1] and "Correct_Diagnosis" in found.skipped[1][1]
    assert found.summary()["skipped"] == 2 and found.summary()["skipped_records"][0].startswith(f"{path}:2: ")


@pytest.mark.parametrize(
    ("name", "n"),
    [("agentclinic_medqa", 107), ("agentclinic_medqa_extended", 214), ("agentclinic_nejm", 15),
     ("agentclinic_nejm_extended", 120)],
)  # fmt: skip
def test_every_record_of_the_four_agentclinic_files_loads(name, n):
    found = read_cases(REPO_ROOT / "data" / f"{name}.jsonl", strict=True)
    assert len(found.cases) == n and not found.skipped


def test_asymptomatic_screening_case_takes_its_complaint_from_the_history():
    """MedQA-extended line 132: `"Symptoms": {}` (a positive stool test found at screening)."""
    case = read_cases(REPO_ROOT / "data" / "agentclinic_medqa_extended.jsonl", strict=True).cases[131]
    assert case.chief_complaint.startswith("The patient presents for a follow-up visit")
    assert "fecal occult blood" in case.chief_complaint and case.history[0].category == "chief_complaint"


# --- our format ------------------------------------------------------------------------------------


def test_round_trip_of_our_format(tmp_path, cases):
    for c in cases:
        assert ClinicalCase.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    edited = dataclasses.replace(cases[0], history=[HistoryFact("h1", "hpi", "Edited fact", 1)])
    path = save_cases([edited, *cases[1:5]], tmp_path / "out" / "ours.jsonl")
    back = load_cases(path)
    assert back == [edited, *cases[1:5]]  # stored checklist kept, not re-derived
    assert path.read_text(encoding="utf-8").count("\n") == 5


def test_mixed_formats_in_one_file(tmp_path, cases):
    path = _write(
        tmp_path,
        json.dumps(cases[3].to_dict()),
        json.dumps(_medqa_record()),
        json.dumps(NEJM),
        name="mix.jsonl",
    )
    got = load_cases(path)
    assert [c.case_id for c in got] == ["agentclinic_medqa-0003", "mix-0001", "mix-0002"]
    assert got[1].history == cases[0].history


def test_semantic_fallback_only_when_lexical_fails(monkeypatch):
    """The MiniLM fallback with a stand-in embedder (the real model costs ~15 s on 2 CPUs; checked by
    hand: "Spirometric testing" -> pft at cosine 0.84, "Audiometry" -> other at 0.45)."""
    import m3.text.embeddings
    from m3.clinic import labs

    def fake_embed(texts):
        axis = {"spirometry": 1, "lung capacity check": 1, "audiometry": 2}  # everything else on axis 0
        out = np.zeros((len(texts), 3), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, axis.get(t, 0)] = 1.0
        return out

    monkeypatch.setattr(m3.text.embeddings, "embed", fake_embed)
    labs._phrase_vectors.cache_clear()
    try:
        assert categorize_test("Lung capacity check") == "other"  # no keyword
        assert categorize_test("Lung capacity check", semantic=True) == "pft"  # nearest phrase: spirometry
        assert categorize_test("Audiometry", semantic=True) == "other"  # cosine 0 < threshold
        assert categorize_test("Urinalysis / WBC", semantic=True) == "urinalysis"  # lexical first
    finally:
        labs._phrase_vectors.cache_clear()
