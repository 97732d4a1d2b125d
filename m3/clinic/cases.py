"""Clinical cases for the OSCE environment: the schema and our own record format (validation).

Files are read and written by `m3.clinic.case_files` (load_cases, save_cases); AgentClinic records
are parsed by `m3.clinic.agentclinic`. This module imports neither, so there is no import circle.

    from m3.clinic.case_files import load_cases, save_cases
    cases = load_cases("data/agentclinic_medqa.jsonl")     # 107 ClinicalCase
    case = cases[0]
    case.chief_complaint                # 'Double vision'
    case.diagnosis.icd10                # 'G70.0'
    [f.id for f in case.history][:3]    # ['h1', 'h2', 'h3']
    save_cases(cases, "out/cases.jsonl")   # our format; load_cases reads it back unchanged

`load_cases` detects the format of every line on its own, so files may be mixed:
  * AgentClinic MedQA / OSCE ({"OSCE_Examination": {...}}; also AgentClinic's MIMIC-IV file),
  * AgentClinic NEJM ({"question", "patient_info", "physical_exams", "answers", "image_url"}),
  * ours ({"schema": "m3.clinic.case/1", ...}, written by `ClinicalCase.to_dict`).
AgentClinic records get their derived fields computed at load time (`m3.clinic.agentclinic`): the
inquiry checklist (`m3.clinic.checklist`), categorised tests (`m3.clinic.labs`) and the ICD-10 code
(`m3.clinic.icd10`). Our own records are taken as stored: no re-derivation, so an edited checklist
survives a round trip. Blank lines are skipped. Every malformed record raises ValueError as
"FILE:LINE: field 'a.b.c' <problem> (<fix>)".

case_id for AgentClinic records is "<file stem>-<index>", index = 0-based position of the record in
its file ("agentclinic_medqa-0000" is case 0), so ids are stable as long as the file is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from m3.clinic.catalogue import CATEGORY_IDS, OTHER
from m3.clinic.icd10 import Diagnosis
from m3.clinic.labs import TestResult

SCHEMA = "m3.clinic.case/1"
HISTORY_CATEGORIES = (
    "chief_complaint", "hpi", "symptom", "past_medical", "medication", "allergy", "social", "family",
    "ros", "other",
)  # fmt: skip


class CaseFormatError(ValueError):
    """A record field is missing or malformed; the loader prefixes FILE:LINE."""

    def __init__(self, field_path: str, problem: str, fix: str) -> None:
        super().__init__(f"field '{field_path}' {problem} ({fix})")
        self.field = field_path


@dataclass(frozen=True)
class HistoryFact:
    """One item of the inquiry checklist. criticality: 2 = critical (chief complaint, present
    illness, red flag), 1 = supplementary. ids are "h1", "h2", ... in checklist order."""

    id: str
    category: str
    text: str
    criticality: int

    def __post_init__(self) -> None:
        if self.criticality not in (1, 2):
            raise ValueError(f"HistoryFact {self.id}: criticality must be 1 or 2, got {self.criticality!r}")
        if self.category not in HISTORY_CATEGORIES:
            raise ValueError(
                f"HistoryFact {self.id}: category must be one of {HISTORY_CATEGORIES}, got {self.category!r}"
            )


@dataclass(frozen=True)
class Finding:
    """One physical-examination finding, e.g. Finding('Vital Signs', 'Heart Rate', '72 bpm')."""

    system: str
    name: str
    value: str


@dataclass(frozen=True)
class Demographics:
    """age in whole years (0 for infants and newborns), sex 'female' | 'male' | None, source text."""

    age: int | None
    sex: str | None
    text: str


@dataclass
class ClinicalCase:
    case_id: str
    source: str
    objective: str
    demographics: Demographics
    chief_complaint: str
    history_present_illness: str
    diagnosis: Diagnosis
    secondary_symptoms: list[str] = field(default_factory=list)
    past_medical_history: str = ""
    social_history: str = ""
    family_history: str = ""
    medications: list[str] = field(default_factory=list)
    allergies: list[str] = field(default_factory=list)
    review_of_systems: str = ""
    other_history: dict[str, str] = field(default_factory=dict)  # Patient_Actor keys we do not model
    history: list[HistoryFact] = field(default_factory=list)  # the inquiry checklist
    exam_findings: list[Finding] = field(default_factory=list)
    test_results: list[TestResult] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # source extras (NEJM image_url, options)

    @property
    def checklist(self) -> list[HistoryFact]:
        """The inquiry checklist (same list as `history`; the name the OSCE verifiers use)."""
        return self.history

    def critical_facts(self) -> list[HistoryFact]:
        return [f for f in self.history if f.criticality == 2]

    def essential_tests(self) -> list[TestResult]:
        return [t for t in self.test_results if t.essential]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict in our format; `from_dict(to_dict(c)) == c`."""
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClinicalCase:
        """Parse our format; raises CaseFormatError naming the first bad field."""
        return _from_dict(d)


# --- our format: validation ------------------------------------------------------------------------

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "an object"}


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _req(d: dict, key: str, typ: type, path: str, *, optional: bool = False, default: Any = None) -> Any:
    """d[key] checked against `typ` (bool is not accepted as int); missing -> error unless optional."""
    full = f"{path}.{key}" if path else key
    if key not in d or (optional and d[key] is None):
        if optional:
            return default
        raise CaseFormatError(full, "missing", f"add it as {_TYPE_NAMES[typ]}")
    value = d[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise CaseFormatError(
            full, f"must be {_TYPE_NAMES[typ]}, got {type_name(value)}", f"write it as {_TYPE_NAMES[typ]}"
        )
    return value


def _str_list(d: dict, key: str, path: str) -> list[str]:
    items = _req(d, key, list, path, optional=True, default=[])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise CaseFormatError(
                f"{path}.{key}[{i}]", f"must be a string, got {type_name(item)}", "list strings only"
            )
    return list(items)


def _objects(d: dict, key: str, path: str) -> list[tuple[str, dict]]:
    items = _req(d, key, list, path, optional=True, default=[])
    out = []
    for i, item in enumerate(items):
        where = f"{path}.{key}[{i}]" if path else f"{key}[{i}]"
        if not isinstance(item, dict):
            raise CaseFormatError(
                where, f"must be an object, got {type_name(item)}", "write one JSON object per item"
            )
        out.append((where, item))
    return out


def _from_dict(d: dict[str, Any]) -> ClinicalCase:
    if d.get("schema") != SCHEMA:
        raise CaseFormatError("schema", f"is {d.get('schema')!r}", f"this reader understands {SCHEMA!r} only")
    demo = _req(d, "demographics", dict, "")
    age = _req(demo, "age", int, "demographics", optional=True)
    sex = _req(demo, "sex", str, "demographics", optional=True)
    if sex not in (None, "female", "male"):
        raise CaseFormatError("demographics.sex", f"is {sex!r}", "use 'female', 'male' or null")
    dg = _req(d, "diagnosis", dict, "")
    match = _req(dg, "match", str, "diagnosis")
    icd10 = _req(dg, "icd10", str, "diagnosis", optional=True)
    if match not in ("exact", "lexical", "none") or (icd10 is None) != (match == "none"):
        raise CaseFormatError(
            "diagnosis.match",
            f"is {match!r} with icd10={icd10!r}",
            "use 'exact'/'lexical' with a code, 'none' with icd10 null",
        )
    history = []
    for where, h in _objects(d, "history", ""):
        crit = _req(h, "criticality", int, where)
        cat = _req(h, "category", str, where)
        if crit not in (1, 2):
            raise CaseFormatError(
                f"{where}.criticality", f"is {crit}", "use 1 (supplementary) or 2 (critical)"
            )
        if cat not in HISTORY_CATEGORIES:
            raise CaseFormatError(
                f"{where}.category", f"is {cat!r}", f"use one of {', '.join(HISTORY_CATEGORIES)}"
            )
        history.append(HistoryFact(_req(h, "id", str, where), cat, _req(h, "text", str, where), crit))
    tests = []
    for where, t in _objects(d, "test_results", ""):
        cat = _req(t, "category", str, where)
        if cat not in CATEGORY_IDS and cat != OTHER:
            raise CaseFormatError(
                f"{where}.category", f"is {cat!r}", "use a catalogue id (m3.clinic.catalogue) or 'other'"
            )
        tests.append(
            TestResult(
                cat,
                _req(t, "name", str, where),
                _req(t, "value", str, where),
                _req(t, "essential", bool, where),
            )
        )
    other = _req(d, "other_history", dict, "", optional=True, default={})
    for k, v in other.items():
        if not isinstance(v, str):
            raise CaseFormatError(
                f"other_history.{k}", f"must be a string, got {type_name(v)}", "flatten it to text"
            )
    return ClinicalCase(
        case_id=_req(d, "case_id", str, ""),
        source=_req(d, "source", str, ""),
        objective=_req(d, "objective", str, ""),
        demographics=Demographics(age, sex, _req(demo, "text", str, "demographics")),
        chief_complaint=_req(d, "chief_complaint", str, ""),
        history_present_illness=_req(d, "history_present_illness", str, ""),
        diagnosis=Diagnosis(
            _req(dg, "text", str, "diagnosis"),
            icd10,
            _req(dg, "icd10_title", str, "diagnosis", optional=True),
            match,
        ),
        secondary_symptoms=_str_list(d, "secondary_symptoms", ""),
        past_medical_history=_req(d, "past_medical_history", str, "", optional=True, default=""),
        social_history=_req(d, "social_history", str, "", optional=True, default=""),
        family_history=_req(d, "family_history", str, "", optional=True, default=""),
        medications=_str_list(d, "medications", ""),
        allergies=_str_list(d, "allergies", ""),
        review_of_systems=_req(d, "review_of_systems", str, "", optional=True, default=""),
        other_history=dict(other),
        history=history,
        exam_findings=[
            Finding(_req(f, "system", str, w), _req(f, "name", str, w), _req(f, "value", str, w))
            for w, f in _objects(d, "exam_findings", "")
        ],
        test_results=tests,
        metadata=_req(d, "metadata", dict, "", optional=True, default={}),
    )
