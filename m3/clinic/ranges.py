"""Adult reference ranges for the analytes that AgentClinic reports as bare numbers ("Na 122 mEq/L").

    from m3.clinic.ranges import out_of_range
    out_of_range("Sodium", "122 mEq/L", "bmp")            # (True, 'sodium 122 outside 135-145')
    out_of_range("Platelets", "275,000 /μL", "cbc")       # (False, 'platelet 275000 within 150000-450000')
    out_of_range("Reticulocyte_Count", "0.8% (normal range: 2-6%)", "cbc")  # (True, ... 2-6 stated)
    out_of_range("Ferritin", "Decreased", "cbc")          # None: no number, or no range known

Used by `m3.clinic.labs.essential_reason` only when the value text carries no explicit flag
("elevated", "(low)"). A range stated in the value itself ("normal range: 2-6%") wins over the table.
Each entry is bound to a catalogue category so that "WBC" in a urinalysis is not read as a blood count.

Sources: conventional US adult ranges as printed in USMLE-style laboratory tables (which is what the
MedQA-derived AgentClinic cases are written against). Deliberately wide where labs disagree (glucose
70-140 mg/dL because most values are random, not fasting).

Limits: adults only (a newborn's bilirubin or haemoglobin is judged by adult limits: most neonatal
cases flag their abnormal values in words anyway); units are checked only where one analyte is
reported in two scales (T4 in ng/dL vs µg/dL; WBC and platelets given in thousands).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from m3.text.normalize import tokens


@dataclass(frozen=True)
class RefRange:
    category: str  # catalogue id the analyte must have been filed under
    names: tuple[str, ...]  # phrases; all words of one phrase must appear in the analyte name
    low: float
    high: float
    unit: str | None = None  # regex the value's unit must match; None = any unit
    thousands_below: float | None = None  # a value under this is in thousands ("12.3" -> 12,300)


def _r(cat: str, names: str, low: float, high: float, unit: str | None = None, k: float | None = None):
    return RefRange(cat, tuple(n.strip() for n in names.split("|")), low, high, unit, k)


REFERENCE_RANGES: tuple[RefRange, ...] = (
    _r("cbc", "hemoglobin|hb|hgb", 12.0, 17.5),
    _r(
        "cbc",
        "wbc|leukocyte|leukocyte count|white blood cell|total count wbc|total wbc count",
        4000,
        11000,
        k=300,
    ),
    _r("cbc", "platelet|platelet count", 150000, 450000, k=2000),
    _r("cbc", "hematocrit|hct", 36, 50),
    _r("cbc", "mcv", 80, 100),
    _r("cbc", "reticulocyte|reticulocyte count", 0.5, 2.5),
    _r("cbc", "neutrophil", 40, 75),
    _r("cbc", "lymphocyte", 20, 45),
    _r("cbc", "eosinophil", 0, 6),
    _r("cbc", "monocyte", 2, 10),
    _r("cbc", "basophil", 0, 2),
    _r("cbc", "band", 0, 5),
    _r("cbc", "lactate dehydrogenase|ldh", 100, 250),
    _r("bmp", "sodium|na", 135, 145),
    _r("bmp", "potassium|k", 3.5, 5.1),
    _r("bmp", "chloride|cl", 98, 107),
    _r("bmp", "bicarbonate|hco3", 22, 29),
    _r("bmp", "calcium|ca|ca2", 8.5, 10.5),
    _r("bmp", "magnesium|mg", 1.7, 2.4),
    _r("renal", "creatinine|cr", 0.6, 1.3),
    _r("renal", "bun|urea nitrogen", 6, 24),
    _r("glucose", "glucose|glu", 70, 140),
    _r("lft", "ast|sgot", 10, 40),
    _r("lft", "alt|sgpt", 7, 56),
    _r("lft", "alkaline phosphatase|alp", 44, 147),
    _r("lft", "bilirubin direct|direct bilirubin", 0.0, 0.3),
    _r("lft", "bilirubin|bilirubin total|total bilirubin", 0.1, 1.2),
    _r("lft", "albumin", 3.5, 5.5),
    _r("lipids", "cholesterol|total cholesterol", 0, 240),
    _r("inflammatory", "esr|erythrocyte sedimentation rate|sedimentation rate", 0, 20),
    _r("coag", "pt|prothrombin time", 10, 14.5),
    _r("coag", "aptt|ptt", 25, 35),
    _r("coag", "inr", 0.8, 1.2),
    _r("thyroid", "tsh", 0.4, 4.5),
    _r("thyroid", "free t4|t4", 0.8, 1.8, unit=r"ng"),
    _r("thyroid", "free t4|t4", 4.5, 12.0, unit=r"[μµu]g|mcg"),
    _r("abg", "ph", 7.35, 7.45),
    _r("abg", "paco2|pco2", 35, 45),
    _r("abg", "pao2|po2", 75, 100),
    _r("abg", "hco3", 22, 26),
    _r("infectious_serology", "cd4|cd4 count|cd4 t lymphocyte", 500, 1500),
    _r("infectious_serology", "viral load", 0, 200),
    _r("pft", "fev1 fvc", 70, 100, unit="%"),
    _r("pft", "fev1|fvc", 80, 130, unit="%"),
    _r("abg", "base excess", -2, 2),
    _r("coag", "partial thromboplastin time", 25, 35),
    _r("csf", "csf white blood cell|csf wbc|csf leukocyte", 0, 5),
    _r("csf", "csf protein", 15, 45),
    _r("csf", "csf glucose", 40, 80),
    _r("csf", "opening pressure", 5, 20),
    _r("csf", "synovial leukocyte|synovial wbc|synovial white blood cell", 0, 200),
    _r("cardiac_markers", "creatine kinase|ck|cpk", 30, 200),
    _r("urinalysis", "wbc|leukocyte", 0, 5),
    _r("urinalysis", "rbc", 0, 2),
    _r("urinalysis", "ph", 4.5, 8.0),
    _r("urinalysis", "specific gravity", 1.005, 1.030),
)

_NUM = r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?"
_FIRST_NUMBER = re.compile(rf"(?<![\w.])({_NUM})\s*([^\s\d(),;]*)")
_STATED_RANGE = re.compile(
    rf"(?:normal|reference)(?: range)?\s*[:=,]?\s*({_NUM})\s*(?:-|–|to)\s*({_NUM})", re.I
)


def _number(text: str) -> tuple[float, str] | None:
    m = _FIRST_NUMBER.search(text)
    if m is None:
        return None
    return float(m.group(1).replace(",", "")), m.group(2)


def _entry_for(analyte_tokens: set[str], category: str, unit: str) -> RefRange | None:
    """The most specific entry (most words matched) of this category whose phrase the name contains."""
    best: tuple[int, RefRange] | None = None
    for entry in REFERENCE_RANGES:
        if entry.category != category or (entry.unit and not re.search(entry.unit, unit, re.I)):
            continue
        for phrase in entry.names:
            words = set(tokens(phrase))
            if words <= analyte_tokens and (best is None or len(words) > best[0]):
                best = (len(words), entry)
    return best[1] if best else None


def out_of_range(analyte: str, value_text: str, category: str) -> tuple[bool, str] | None:
    """(is_abnormal, reason) for a numeric value, or None when no number or no range applies.
    `analyte` is the most specific part of the test name ("Bilirubin_Direct"), `category` its
    catalogue id. A range stated in the value ("(normal range: 2-6%)") is used first."""
    num = _number(value_text)
    if num is None:
        return None
    value, unit = num
    stated = _STATED_RANGE.search(value_text)
    if stated:
        low, high = float(stated.group(1).replace(",", "")), float(stated.group(2).replace(",", ""))
        inside = low <= value <= high
        return (not inside, f"{value:g} {'within' if inside else 'outside'} {low:g}-{high:g} stated")
    entry = _entry_for(set(tokens(analyte)), category, unit)
    if entry is None:
        return None
    if entry.thousands_below is not None and value < entry.thousands_below:
        value *= 1000
    inside = entry.low <= value <= entry.high
    name = entry.names[0]
    return (not inside, f"{name} {value:g} {'within' if inside else 'outside'} {entry.low:g}-{entry.high:g}")
