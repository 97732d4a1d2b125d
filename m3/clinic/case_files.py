"""Case files: read JSONL of any supported format into ClinicalCase, write our own format.

    from m3.clinic.case_files import load_cases, save_cases
    cases = load_cases("data/agentclinic_medqa.jsonl")     # 107 ClinicalCase
    save_cases(cases, "out/cases.jsonl")   # our format; load_cases reads it back unchanged

`load_cases` detects the format of every line on its own, so files may be mixed:
  * AgentClinic MedQA / OSCE ({"OSCE_Examination": {...}}; also AgentClinic's MIMIC-IV file),
  * AgentClinic NEJM ({"question", "patient_info", "physical_exams", "answers", "image_url"}),
  * ours ({"schema": "m3.clinic.case/1", ...}, written by `ClinicalCase.to_dict`).
Parsers live in `m3.clinic.agentclinic`, the schema in `m3.clinic.cases`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from m3.clinic.agentclinic import is_medqa, is_nejm, parse_medqa, parse_nejm
from m3.clinic.cases import SCHEMA, CaseFormatError, ClinicalCase, type_name

log = logging.getLogger(__name__)


def _parse_record(record: dict, stem: str, index: int, semantic_tests: bool) -> ClinicalCase:
    if "schema" in record:
        return ClinicalCase.from_dict(record)
    if is_medqa(record):
        return parse_medqa(record, f"{stem}-{index:04d}", stem, semantic_tests=semantic_tests)
    if is_nejm(record):
        return parse_nejm(record, f"{stem}-{index:04d}", stem, semantic_tests=semantic_tests)
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise CaseFormatError(
        "<record>",
        f"has an unknown layout (keys: {keys})",
        f"expected 'OSCE_Examination' (AgentClinic MedQA), 'patient_info' + 'answers' (AgentClinic NEJM) "
        f"or 'schema': '{SCHEMA}' (m3 format)",
    )


@dataclass
class CaseFile:
    """What `read_cases` found: the cases, and each record it skipped as (line, reason)."""

    path: Path
    cases: list[ClinicalCase] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> dict:
        return {"file": str(self.path), "cases": len(self.cases), "skipped": len(self.skipped),
                "skipped_records": [f"{self.path}:{line}: {why}" for line, why in self.skipped]}  # fmt: skip


def read_cases(path: str | Path, *, semantic_tests: bool = False, strict: bool = False) -> CaseFile:
    """Every usable case of a JSONL file (formats detected per line, see the module docstring).

    A record that cannot be used (invalid JSON, a missing or malformed field, a repeated case id) is
    skipped with its line and reason (logged, and listed in `CaseFile.skipped`); with strict=True the
    first one raises ValueError "FILE:LINE: field '...' <problem> (<fix>)" instead.
    `semantic_tests=True` lets test names that match no catalogue keyword fall back to MiniLM
    similarity (loads a model; off by default so loading stays fast and model-free)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such case file; pass a JSONL file such as data/agentclinic_medqa.jsonl"
        )
    out = CaseFile(path)
    seen: dict[str, int] = {}
    index = 0  # AgentClinic ids count records, usable or not, so ids do not shift when one is skipped
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                case = _parse_line(line, path.stem, index, semantic_tests)
                if case.case_id in seen:
                    raise ValueError(
                        f"field 'case_id' {case.case_id!r} repeats line {seen[case.case_id]} "
                        "(case ids must be unique in a file)"
                    )
            except ValueError as e:
                if strict:
                    raise ValueError(f"{path}:{lineno}: {e}") from e
                log.warning("%s:%d: record skipped: %s", path, lineno, e)
                out.skipped.append((lineno, str(e)))
                continue
            finally:
                index += 1
            seen[case.case_id] = lineno
            out.cases.append(case)
    return out


def load_cases(path: str | Path, *, semantic_tests: bool = False, strict: bool = False) -> list[ClinicalCase]:
    """The usable cases of a JSONL file (`read_cases`; skipped records are logged)."""
    return read_cases(path, semantic_tests=semantic_tests, strict=strict).cases


def _parse_line(line: str, stem: str, index: int, semantic_tests: bool) -> ClinicalCase:
    try:
        record = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"invalid JSON ({e.msg} at column {e.colno}); each line must hold one JSON object"
        ) from e
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type_name(record)}; one case per line")
    return _parse_record(record, stem, index, semantic_tests)


def save_cases(cases: list[ClinicalCase], path: str | Path) -> Path:
    """Write `cases` as JSONL in our format (UTF-8, one case per line); parent dirs are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for case in cases:
            fh.write(json.dumps(case.to_dict(), ensure_ascii=False) + "\n")
    return path
