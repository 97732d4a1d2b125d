"""AgentClinic records (MedQA/OSCE and NEJM layouts) -> ClinicalCase, with all derivations applied.

    from m3.clinic.agentclinic import parse_medqa, parse_nejm, parse_demographics
    parse_demographics("35-year-old female")                      # Demographics(35, 'female', ...)
    parse_demographics("Newborn, 3050-g (6-lb 12-oz) male, ...")  # Demographics(0, 'male', ...)

Normally reached through `m3.clinic.cases.load_cases`. AgentClinic (github SamuelSchmidgall/AgentClinic,
MIT) ships two layouts:
  * MedQA / MIMIC-IV: {"OSCE_Examination": {"Objective_for_Doctor", "Patient_Actor": {"Demographics",
    "History", "Symptoms": {"Primary_Symptom", "Secondary_Symptoms"}, "Past_Medical_History",
    "Social_History", "Review_of_Systems", optional "Family_History", "Current_Medications"/
    "Medications"/"Drug_History", "Allergies", ...}, "Physical_Examination_Findings": {nested},
    "Test_Results": {nested}, "Correct_Diagnosis"}}.
    Required: Objective_for_Doctor, Patient_Actor.{Demographics, History, Symptoms.Primary_Symptom},
    Correct_Diagnosis. Other history fields may be strings, lists or {system: text} objects.
  * NEJM image challenge: {"image_url", "question", "patient_info", "physical_exams", "answers":
    [{"text", "correct"}]} with exactly one correct answer. patient_info is a role-play brief for the
    patient actor; its instructions ("Remember, you are not aware of ...") are dropped, the rest
    becomes the present illness. physical_exams is free text listing test results ("1. Dermoscopy
    findings: ..." or "- CT scan of the neck: ..."), split into one TestResult per item. The exam
    findings are the question's "On physical examination, ..." sentences. The options, question and
    image_url go to `metadata` (the question states the findings, so the doctor must not see it).
"""

from __future__ import annotations

import re
from typing import Any

from m3.clinic.cases import CaseFormatError, ClinicalCase, Demographics, Finding, type_name
from m3.clinic.checklist import derive_checklist
from m3.clinic.icd10 import map_diagnosis
from m3.clinic.labs import TestResult, categorize_test, derive_tests, flatten, humanize, is_essential
from m3.text.lexical import split_sentences

_AGE_YEARS = re.compile(r"(\d+)[- ]years?[- ]old", re.I)
_AGE_INFANT = re.compile(r"\d+[- ](months?|weeks?|days?)[- ]old|\b(newborn|neonate|infant)\b", re.I)
_SEX = re.compile(r"\b(female|woman|girl|lady|gravida|male|man|boy|gentleman)\b", re.I)
_FEMALE = {"female", "woman", "girl", "lady", "gravida"}

_MEDICATION_KEYS = ("Current_Medications", "Medications", "Medication", "Drug_History", "Medication_History")
_KNOWN_ACTOR_KEYS = {
    "Demographics", "History", "Symptoms", "Past_Medical_History", "Social_History", "Review_of_Systems",
    "Family_History", "Allergies", *_MEDICATION_KEYS,
}  # fmt: skip


def parse_demographics(text: str) -> Demographics:
    """Age in whole years (months/weeks/days-old, newborn, infant -> 0) and sex from the first sex word
    ("70-year-old man accompanied by his wife" -> male); None when the text does not say."""
    m = _AGE_YEARS.search(text)
    age = int(m.group(1)) if m else (0 if _AGE_INFANT.search(text) else None)
    s = _SEX.search(text)
    sex = None if s is None else ("female" if s.group(1).lower() in _FEMALE else "male")
    return Demographics(age, sex, text.strip())


def _text(value: Any, path: str) -> str:
    """A history field as text: strings as is, lists one item per line, objects as 'Key: text' lines."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(_text(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        return "\n".join(f"{humanize(k)}: {_text(v, f'{path}.{k}')}" for k, v in value.items())
    if value is None:
        return ""
    raise CaseFormatError(
        path, f"must be text, a list or an object, got {type_name(value)}", "write it as a string"
    )


_WANT = {str: "a string", dict: "an object", list: "a list"}


def _req(d: dict, key: str, typ: type, path: str) -> Any:
    full = f"{path}.{key}" if path else key
    if key not in d:
        raise CaseFormatError(full, "missing", f"add it as {_WANT[typ]}")
    if not isinstance(d[key], typ):
        raise CaseFormatError(
            full, f"must be {_WANT[typ]}, got {type_name(d[key])}", f"write it as {_WANT[typ]}"
        )
    return d[key]


def is_medqa(record: dict) -> bool:
    return "OSCE_Examination" in record


def is_nejm(record: dict) -> bool:
    return "patient_info" in record and "answers" in record


def _findings(tree: dict) -> list[Finding]:
    out = []
    for path, value in flatten(tree):
        name = " / ".join(path[1:]) if len(path) > 1 else path[0]
        out.append(Finding(path[0], name, value))
    return out


def _finish(case: ClinicalCase) -> ClinicalCase:
    case.history = derive_checklist(case)
    return case


def _chief_complaint(symptoms: dict, actor: dict, pa: str) -> str:
    """Symptoms.Primary_Symptom; an asymptomatic screening case (`"Symptoms": {}`) has none, so the
    first sentence of the history stands in (what brought the patient: "a positive stool test ...")."""
    if "Primary_Symptom" in symptoms or symptoms:
        return _req(symptoms, "Primary_Symptom", str, f"{pa}.Symptoms").strip()
    history = _req(actor, "History", str, pa).strip()
    first = split_sentences(history)[:1]
    if not first:
        raise CaseFormatError(
            f"{pa}.Symptoms",
            "is empty and so is History",
            "give a Primary_Symptom or a History to take it from",
        )
    return first[0].rstrip(".")


def parse_medqa(record: dict, case_id: str, source: str, *, semantic_tests: bool = False) -> ClinicalCase:
    """One AgentClinic MedQA/OSCE record -> ClinicalCase (checklist, tests and ICD-10 derived)."""
    root = "OSCE_Examination"
    osce = _req(record, root, dict, "")
    actor = _req(osce, "Patient_Actor", dict, root)
    pa = f"{root}.Patient_Actor"
    symptoms = _req(actor, "Symptoms", dict, pa)
    secondary = symptoms.get("Secondary_Symptoms", [])
    if isinstance(secondary, str):
        secondary = [secondary]
    if not isinstance(secondary, list) or not all(isinstance(s, str) for s in secondary):
        raise CaseFormatError(
            f"{pa}.Symptoms.Secondary_Symptoms",
            f"must be a list of strings, got {type_name(secondary)}",
            'write ["symptom", ...]',
        )
    diagnosis_text = _req(osce, "Correct_Diagnosis", str, root)
    if not diagnosis_text.strip():
        raise CaseFormatError(f"{root}.Correct_Diagnosis", "is empty", "write the diagnosis as text")
    exam = osce.get("Physical_Examination_Findings", {})
    tests = osce.get("Test_Results", {})
    for key, value in (("Physical_Examination_Findings", exam), ("Test_Results", tests)):
        if not isinstance(value, dict):
            raise CaseFormatError(
                f"{root}.{key}",
                f"must be an object, got {type_name(value)}",
                'nest results as {"Test": {"Item": "value"}}',
            )
    medications: list[str] = []
    for key in _MEDICATION_KEYS:
        if key in actor:
            medications += [m for m in _text(actor[key], f"{pa}.{key}").split("\n") if m.strip()]
    allergies = [a for a in _text(actor.get("Allergies"), f"{pa}.Allergies").split("\n") if a.strip()]
    other = {humanize(k): _text(v, f"{pa}.{k}") for k, v in actor.items() if k not in _KNOWN_ACTOR_KEYS}
    case = ClinicalCase(
        case_id=case_id,
        source=source,
        objective=_req(osce, "Objective_for_Doctor", str, root).strip(),
        demographics=parse_demographics(_req(actor, "Demographics", str, pa)),
        chief_complaint=_chief_complaint(symptoms, actor, pa),
        history_present_illness=_req(actor, "History", str, pa).strip(),
        diagnosis=map_diagnosis(diagnosis_text.strip()),
        secondary_symptoms=[s.strip() for s in secondary if s.strip()],
        past_medical_history=_text(actor.get("Past_Medical_History"), f"{pa}.Past_Medical_History"),
        social_history=_text(actor.get("Social_History"), f"{pa}.Social_History"),
        family_history=_text(actor.get("Family_History"), f"{pa}.Family_History"),
        medications=medications,
        allergies=allergies,
        review_of_systems=_text(actor.get("Review_of_Systems"), f"{pa}.Review_of_Systems"),
        other_history={k: v for k, v in other.items() if v},
        exam_findings=_findings(exam),
        test_results=derive_tests(tests, diagnosis_text, semantic=semantic_tests),
    )
    return _finish(case)


# --- NEJM ------------------------------------------------------------------------------------------

# Sentences of the actor brief that instruct the actor instead of describing the patient.
_ACTOR_INSTRUCTION = re.compile(
    r"\b(your role|patient actor|as a patient|remember|not aware|don'?t know|do not know"
    r"|haven'?t (seen|been told)"
    r"|convey|portray|your character|the details)\b",
    re.I,
)
_ITEM_SPLIT = re.compile(r"(?:^|\s)(?:-|\d{1,2}\.)\s+")
# "Tests for HIV: Negative Imaging results:" = an item plus the next header (a missing " - ")
_HEADER_GLUED = re.compile(r"^(?P<item>[^:]+:\s*\S.*?)\s+(?P<header>[A-Z][\w ]{2,40}):$")
_ROLE_PREFIX = re.compile(
    r"^\s*(for your role )?as a patient( actor)?[^,:]*[,:]\s*|^\s*for your role[^,:]*[,:]\s*", re.I
)
_DEMO_SPAN = re.compile(r"\b\d+[- ](?:year|month|week|day)s?[- ]old(?: \w+)?", re.I)
_CHIEF = re.compile(
    r"\b(?:presented|presents|was brought|came|was evaluated|was admitted)\b[^.]*?\bwith (?:an? )?"
    r"(?:[\w-]+ history of )?(?P<cc>[^.]+)",
    re.I,
)


def _actor_facts(patient_info: str) -> list[str]:
    out = []
    for chunk in _ITEM_SPLIT.split(_ROLE_PREFIX.sub("", patient_info)):
        chunk = re.sub(r"\*\*([^*]+)\*\*:?", "", chunk).strip()  # "**Symptoms**:" headings
        for sentence in split_sentences(chunk):
            sentence = sentence.strip()
            if not _ACTOR_INSTRUCTION.search(sentence) and re.search(r"\w{3}", sentence):
                out.append(sentence[0].upper() + sentence[1:])
    return out


def _nejm_tests(text: str) -> list[tuple[str, str]]:
    """Free-text test list -> [(name, value)]; headers ("Imaging results:") prefix the items below."""
    out: list[tuple[str, str]] = []
    header = ""
    for raw in _ITEM_SPLIT.split(text):
        seg = raw.strip()
        if not seg:
            continue
        glued = _HEADER_GLUED.match(seg)
        if glued:  # "Tests for HIV: Negative Imaging results:" holds an item and the next header
            seg, next_header = glued.group("item"), glued.group("header")
        else:
            next_header = None
        if seg.endswith(":") and len(seg.split()) <= 6:
            header = seg[:-1].strip()
            continue
        if seg.endswith(":"):  # a long preamble ("The information extracted ... includes:")
            header = ""
            continue
        name, sep, value = seg.partition(":")
        name, value = (name.strip(), value.strip()) if sep else (seg, seg)
        out.append((f"{header} / {name}" if header else name, value))
        if next_header:
            header = next_header
    return out


def parse_nejm(record: dict, case_id: str, source: str, *, semantic_tests: bool = False) -> ClinicalCase:
    """One AgentClinic NEJM record -> ClinicalCase (see the module docstring for the mapping)."""
    question = _req(record, "question", str, "").strip() if "question" in record else ""
    patient_info = _req(record, "patient_info", str, "")
    exams = _req(record, "physical_exams", str, "") if "physical_exams" in record else ""
    answers = _req(record, "answers", list, "")
    correct = []
    for i, a in enumerate(answers):
        if (
            not isinstance(a, dict)
            or not isinstance(a.get("text"), str)
            or not isinstance(a.get("correct"), bool)
        ):
            raise CaseFormatError(
                f"answers[{i}]", 'must be {"text": string, "correct": true|false}', "fix that option"
            )
        if a["correct"]:
            correct.append(a["text"].strip())
    if any(not c for c in correct):
        raise CaseFormatError("answers", "has an empty correct option", "write the diagnosis text")
    if len(correct) != 1:
        raise CaseFormatError(
            "answers",
            f"has {len(correct)} options marked correct",
            'mark exactly one option with "correct": true',
        )
    facts = _actor_facts(patient_info)
    sentences = split_sentences(question)
    cc = _CHIEF.search(sentences[0]) if sentences else None
    chief = cc.group("cc").strip() if cc else (facts[0] if facts else "")
    asked = [s for s in sentences if s.endswith("?")]
    exam_sentences = [s for s in sentences if re.search(r"\bphysical examination\b", s, re.I)]
    diagnosis = correct[0]
    results = []
    for name, value in _nejm_tests(exams):
        cat = categorize_test(name, value, semantic=semantic_tests)
        results.append(TestResult(cat, name, value, is_essential(name, value, diagnosis, cat)))
    # "A 55-year-old woman presented ..." -> "55-year-old woman"; the actor brief is the fallback
    demo = next((m.group(0) for s in [*sentences[:1], *facts] if (m := _DEMO_SPAN.search(s))), "")
    case = ClinicalCase(
        case_id=case_id,
        source=source,
        objective=asked[-1] if asked else "What is the most likely diagnosis?",
        demographics=parse_demographics(demo),
        chief_complaint=chief,
        history_present_illness=" ".join(facts),
        diagnosis=map_diagnosis(diagnosis),
        exam_findings=[Finding("General", "Physical examination", s) for s in exam_sentences],
        test_results=results,
        metadata={
            "image_url": record.get("image_url"),
            "question": question,
            "options": [a["text"] for a in answers],
        },
    )
    return _finish(case)
