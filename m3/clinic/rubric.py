"""The clinical rubric of a case, and R_global of a consultation scored against it (SPAR's reward).

The method scores a whole consultation trajectory against clinical rubrics: R_global = R_task
(eq. 1, `m3.judges.rubric.rubric_reward`) of the trajectory under a rubric built from the case's own
facts. `case_rubric` builds it, one integer-weighted item per fact:

    stage      item (tag)                                                        weight (default)
    inquiry    "Elicits the history item: <critical fact>"     (history:<id>)     +5  (not the chief
               complaint, which the patient states in the opening)
               "Elicits the history item: <supplementary fact>" (history:<id>)    +2
               "Screens for the red flag: <name>"              (red_flag:<name>)  +3  (the case's red flags)
               "Gives unsafe advice ..."                       (unsafe_advice)    -8
    ddx        "Lists <diagnosis> in the differential"         (ddx)              +5
    lab        "Orders the essential test: <name>"             (test:<category>)  +5
               "Orders the test: <name>"  (non-essential)      (test:<category>)  +1
    diagnosis  "States the final diagnosis: <diagnosis>"       (diagnosis)        +10
               "States a final diagnosis outside <diagnosis>'s ICD-10 chapter" (off_branch)  -5

The weights are OPEN in the paper (`CaseRubricConfig`): the diagnosis is the outcome, critical history
and essential tests are what the station checklists weigh, supplementary history counts less. The
off-branch diagnosis is a NEGATIVE item, so its penalty reaches RL through eq. 1 (R stays in [0, 1]:
SPAR multiplies it by gamma_j <= 1, and a violation must never raise a reward).

Verdicts a_i come from one of two graders, like every judge here:
  * "clinic" (offline, default): the case's own verifiers decide each item exactly: the patient
    disclosed the fact (the simulator's labels), a red flag was screened (named by the doctor or
    disclosed), the ordered tests' catalogue categories, the hierarchical ICD-10 match of the
    differential and the final diagnosis, the step verifier's unsafe-advice violations.
  * a rubric judge (`m3.judges`): every item graded over the whole trajectory text
    (`trajectory_text`: every turn after the opening, "Doctor:" / "Patient:" lines).
A row that runs only some stages (SPAR's segmented pipeline) is scored on those stages' items.

    items = case_rubric(case)
    r = r_global(case, transcript)                   # clinic verdicts, eq. 1
    r = await r_global_judged(case, transcript, verifier)   # a RubricVerifier's judge, eq. 1
Run: `pytest tests/m3/clinic/test_rubric.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3.clinic.checklist import red_flags
from m3.clinic.icd10 import icd10_relation, map_diagnosis
from m3.clinic.labs import categorize_test
from m3.clinic.parse import parse_final_diagnosis, parse_list
from m3.clinic.steps import verify_steps
from m3.clinic.transcript import STAGES, Transcript
from m3.clinic.verifiers import VerifierConfig, covered_fact_ids, diagnosis_match
from m3.judges.base import RubricItem
from m3.judges.rubric import rubric_reward


@dataclass(frozen=True)
class CaseRubricConfig:
    """Integer weights in [-10, 10] of the case rubric's items (OPEN in the paper)."""

    critical_history: int = 5
    supplementary_history: int = 2
    red_flag: int = 3
    unsafe_advice: int = -8
    ddx: int = 5
    essential_test: int = 5
    other_test: int = 1
    diagnosis: int = 10
    off_branch: int = -5

    def __post_init__(self) -> None:
        for name, w in self.__dict__.items():
            if not -10 <= w <= 10 or w == 0:
                raise ValueError(f"case rubric weight {name}={w} must be a non-zero integer in [-10, 10]")
            if (w < 0) != (name in ("unsafe_advice", "off_branch")):
                raise ValueError(f"case rubric weight {name}={w} has the wrong sign")


def case_rubric(case, cfg: CaseRubricConfig = CaseRubricConfig()) -> list[RubricItem]:
    """The case's clinical rubric (table in the module docstring); tags = (stage, check)."""
    items = []
    for f in case.history:
        if f.category == "chief_complaint":  # the patient states it in the opening: nothing to elicit
            continue
        w = cfg.critical_history if f.criticality == 2 else cfg.supplementary_history
        items.append(RubricItem(f"Elicits the history item: {f.text}", w, ("inquiry", f"history:{f.id}")))
    flags = red_flags(" ".join(f.text for f in case.history))
    items += [
        RubricItem(f"Screens for the red flag: {n}", cfg.red_flag, ("inquiry", f"red_flag:{n}"))
        for n in flags
    ]
    items.append(
        RubricItem(
            "Gives unsafe advice: dismisses a red flag, tells the patient to stop a medication abruptly, "
            "or doses a controlled drug without assessment",
            cfg.unsafe_advice,
            ("inquiry", "unsafe_advice"),
        )
    )
    dx = case.diagnosis.text
    items.append(RubricItem(f"Lists {dx} in the differential diagnosis", cfg.ddx, ("ddx", "ddx")))
    seen: set[str] = set()
    for t in sorted(case.test_results, key=lambda t: not t.essential):  # essential first: one item a category
        if t.category == "other" or t.category in seen:
            continue
        seen.add(t.category)
        what, w = (
            ("Orders the essential test", cfg.essential_test)
            if t.essential
            else ("Orders the test", cfg.other_test)
        )
        items.append(RubricItem(f"{what}: {t.name}", w, ("lab", f"test:{t.category}")))
    items.append(RubricItem(f"States the final diagnosis: {dx}", cfg.diagnosis, ("diagnosis", "diagnosis")))
    items.append(
        RubricItem(
            f"States a final diagnosis outside the ICD-10 chapter of {dx}",
            cfg.off_branch,
            ("diagnosis", "off_branch"),
        )
    )
    return items


def for_stages(items: list[RubricItem], stages: tuple[str, ...] | list[str]) -> list[RubricItem]:
    """The items of the stages a row ran (tags[0] is the stage)."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {list(STAGES)}")
    return [it for it in items if it.tags[0] in stages]


def clinic_verdicts(
    case, t: Transcript, items: list[RubricItem], verifier: VerifierConfig | None = None, violations=None
) -> list[bool]:
    """a_i of every item from the case's own verifiers (module docstring). `violations`: the step
    verifier's V_j (the agent loop's extra_fields["step_violations"], dicts or Violations); computed
    when None."""
    verifier = verifier or VerifierConfig()
    covered = covered_fact_ids(t)
    inquiry_text = " ".join(x.text for x in t.doctor_turns("inquiry"))
    disclosed = " ".join(f.text for f in case.history if f.id in covered)
    screened = set(red_flags(inquiry_text)) | set(red_flags(disclosed))
    if violations is None:
        violations = verify_steps(t)
    unsafe = any(
        (v["kind"] if isinstance(v, dict) else v.kind) == "unsafe_advice" for vs in violations for v in vs
    )
    ddx = parse_list(t.stage_output("ddx"), max_items=verifier.max_ddx)
    ordered = {categorize_test(x) for x in parse_list(t.stage_output("lab"))}
    final = parse_final_diagnosis(t.stage_output("diagnosis"))
    relation = diagnosis_match(final, case.diagnosis, verifier) if final.strip() else None
    scores = verifier.relation_scores
    # off-branch only for a diagnosis that maps to ICD-10 ("I am not sure" states none)
    guess = map_diagnosis(final).icd10 if final.strip() else None
    off_branch = (
        guess is not None and case.diagnosis.icd10 is not None
        and icd10_relation(guess, case.diagnosis.icd10) == "off_branch"
    )  # fmt: skip
    met = []
    for it in items:
        check = it.tags[1]
        kind, _, key = check.partition(":")
        if kind == "history":
            met.append(key in covered)
        elif kind == "red_flag":
            met.append(key in screened)
        elif kind == "unsafe_advice":
            met.append(unsafe)
        elif kind == "ddx":
            met.append(
                any(diagnosis_match(d, case.diagnosis, verifier) >= scores["same_category"] for d in ddx)
            )
        elif kind == "test":
            met.append(key in ordered)
        elif kind == "diagnosis":
            met.append(relation is not None and relation >= scores["same_category"])
        elif kind == "off_branch":
            met.append(off_branch)
        else:
            raise ValueError(f"case rubric item tag {check!r} has no clinic check")
    return met


def r_global(
    case, t: Transcript, stages=STAGES, cfg: CaseRubricConfig = CaseRubricConfig(), **kw
) -> float | None:
    """R_global = eq. 1 over the case rubric's items of `stages`, clinic verdicts; None if none apply."""
    items = for_stages(case_rubric(case, cfg), stages)
    if not items:
        return None
    return rubric_reward([it.points for it in items], clinic_verdicts(case, t, items, **kw))


def trajectory_text(t: Transcript) -> tuple[list[dict], str]:
    """(the opening the doctor saw, every later turn as "Doctor:" / "Patient:" / "Instruction:" lines):
    what a rubric judge grades."""
    first = next((i for i, x in enumerate(t.turns) if x.role == "doctor"), len(t.turns))
    opening = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
    opening.append({"role": "user", "content": "\n\n".join(x.text for x in t.turns[:first])})
    speaker = {"doctor": "Doctor", "patient": "Patient", "interrupt": "Patient", "instruction": "Instruction"}
    return opening, "\n".join(f"{speaker[x.role]}: {x.text}" for x in t.turns[first:])


async def r_global_judged(
    case, t: Transcript, verifier, stages=STAGES, cfg: CaseRubricConfig = CaseRubricConfig()
):
    """R_global with a rubric judge (`m3.judges.rubric.RubricVerifier`) grading the whole trajectory."""
    items = for_stages(case_rubric(case, cfg), stages)
    if not items:
        return None
    opening, text = trajectory_text(t)
    return (await verifier.score(opening, text, items)).reward
