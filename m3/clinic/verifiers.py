"""Stage verifiers G_k of the four-stage consultation: pure functions of (case, transcript).

They are SPAR's stage rewards (the quality gate V_k >= tau between stages) and the OSCE stations:

    G_inquiry   coverage of the inquiry checklist weighted by criticality (2: chief complaint,
                present illness, red flags; 1: supplementary), facts the patient already stated in
                the opening excluded; a fact counts once however often it is asked (trivial repeats
                add nothing)
    G_ddx       rank-aware: max_i m(d_i) / log2(i + 1) over the doctor's ranked list, with m the
                hierarchical ICD-10 match of d_i to the reference (1 exact ... 0 off-branch)
    G_lab       F1 of precision over ordered test categories and a recall that weighs essential
                tests `essential_weight` times (default 2): R_w = (w|O∩E| + |O∩(R\\E)|) / (w|E| + |R\\E|)
    G_diag      hierarchical ICD-10 match: exact 1.0 > same category 0.7 > same block 0.4 >
                same chapter 0.2 > off-branch -0.2 (values in `VerifierConfig`); when the
                reference has no code, a diagnosis matcher decides (folded text equality, else
                MiniLM similarity >= `text_match_threshold`; an LLM judge can be plugged in)

    g = stage_scores(case, transcript)       # {"inquiry": ..., "ddx": ..., "lab": ..., "diagnosis": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from m3.clinic.icd10 import icd10_relation, map_diagnosis
from m3.clinic.labs import categorize_test
from m3.clinic.parse import parse_final_diagnosis, parse_list
from m3.clinic.transcript import Transcript
from m3.text.normalize import fold


@dataclass
class VerifierConfig:
    relation_scores: dict[str, float] = field(
        default_factory=lambda: {
            "exact": 1.0,
            "same_category": 0.7,
            "same_block": 0.4,
            "same_chapter": 0.2,
            "off_branch": -0.2,
        }
    )
    essential_weight: float = 2.0  # lab recall weight of essential tests (OPEN; SCAN-bench favours recall)
    text_match_threshold: float = 0.8  # diagnosis text similarity when no ICD-10 code is known
    max_ddx: int = 5

    def __post_init__(self) -> None:
        missing = {"exact", "same_category", "same_block", "same_chapter", "off_branch"} - set(
            self.relation_scores
        )
        if missing:
            raise ValueError(f"relation_scores lacks {sorted(missing)}")
        if self.essential_weight < 1:
            raise ValueError("essential_weight must be >= 1 (it up-weights essential tests)")


# --- inquiry ---------------------------------------------------------------------------------
def covered_fact_ids(transcript: Transcript) -> set[str]:
    """Checklist facts the patient disclosed in answer to the doctor (from the simulator's labels)."""
    return {f for t in transcript.turns if t.role == "patient" for f in t.meta.get("facts", [])}


def inquiry_score(case, transcript: Transcript, opening_fact_ids: set[str] | None = None) -> float:
    """sum_{facts covered} criticality / sum_{facts} criticality, opening facts excluded; in [0, 1]."""
    skip = opening_fact_ids or set()
    facts = [f for f in case.checklist if f.id not in skip]
    total = sum(f.criticality for f in facts)
    if total == 0:
        return 1.0
    covered = covered_fact_ids(transcript)
    return sum(f.criticality for f in facts if f.id in covered) / total


# --- diagnosis matching ----------------------------------------------------------------------
TextMatcher = Callable[[str, str], bool]


def embedding_text_match(threshold: float) -> TextMatcher:
    def match(pred: str, ref: str) -> bool:
        if fold(pred) == fold(ref):
            return True
        from m3.text.embeddings import embed

        a, b = embed([pred, ref])
        return float(a @ b) >= threshold

    return match


def diagnosis_match(pred: str, reference, cfg: VerifierConfig, matcher: TextMatcher | None = None) -> float:
    """Score of a predicted diagnosis text against the case's reference `Diagnosis`."""
    if not pred.strip():
        return cfg.relation_scores["off_branch"]
    if reference.icd10 is not None:
        guess = map_diagnosis(pred)
        if guess.icd10 is not None:
            return cfg.relation_scores[icd10_relation(guess.icd10, reference.icd10)]
    matcher = matcher or embedding_text_match(cfg.text_match_threshold)
    return 1.0 if matcher(pred, reference.text) else cfg.relation_scores["off_branch"]


def ddx_score(case, transcript: Transcript, cfg: VerifierConfig, matcher: TextMatcher | None = None) -> float:
    """max_i max(m(d_i), 0) / log2(i + 1) over the ranked differential (i from 1); in [0, 1]."""
    items = parse_list(transcript.stage_output("ddx"), max_items=cfg.max_ddx)
    best = 0.0
    for rank, d in enumerate(items, start=1):
        best = max(best, max(diagnosis_match(d, case.diagnosis, cfg, matcher), 0.0) / math.log2(rank + 1))
    return best


def diagnosis_score(
    case, transcript: Transcript, cfg: VerifierConfig, matcher: TextMatcher | None = None
) -> float:
    return diagnosis_match(
        parse_final_diagnosis(transcript.stage_output("diagnosis")), case.diagnosis, cfg, matcher
    )


# --- lab -------------------------------------------------------------------------------------
def lab_f1(ordered: set[str], reference: set[str], essential: set[str], essential_weight: float) -> float:
    """F1 of P = |O∩R|/|O| and R_w = (w|O∩E| + |O∩(R\\E)|) / (w|E| + |R\\E|); 0 if nothing ordered."""
    if not reference:  # nothing was needed: ordering nothing is right, anything else is not
        return 0.0 if ordered else 1.0
    if not ordered:
        return 0.0
    precision = len(ordered & reference) / len(ordered)
    optional = reference - essential
    recall = (essential_weight * len(ordered & essential) + len(ordered & optional)) / (
        essential_weight * len(essential) + len(optional)
    )
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def lab_score(case, transcript: Transcript, cfg: VerifierConfig) -> float:
    ordered = {categorize_test(t) for t in parse_list(transcript.stage_output("lab"))} - {"other"}
    reference = {r.category for r in case.test_results} - {"other"}
    essential = {r.category for r in case.test_results if r.essential} - {"other"}
    return lab_f1(ordered, reference, essential, cfg.essential_weight)


def stage_scores(
    case, transcript: Transcript, cfg: VerifierConfig | None = None, matcher: TextMatcher | None = None
) -> dict[str, float]:
    """G_k of every stage the transcript reached."""
    cfg = cfg or VerifierConfig()
    out: dict[str, float] = {}
    if transcript.doctor_turns("inquiry"):
        opening = set(transcript.turns[0].meta.get("facts", [])) if transcript.turns else set()
        out["inquiry"] = inquiry_score(case, transcript, opening)
    if transcript.doctor_turns("ddx"):
        out["ddx"] = ddx_score(case, transcript, cfg, matcher)
    if transcript.doctor_turns("lab"):
        out["lab"] = lab_score(case, transcript, cfg)
    if transcript.doctor_turns("diagnosis"):
        out["diagnosis"] = diagnosis_score(case, transcript, cfg, matcher)
    return out
