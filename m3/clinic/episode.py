"""The four-stage consultation episode: Inquiry -> DDX -> Lab -> Diagnosis.

Stage k's input is x_{k+1} = [x_k, y_k, p_{k+1}]: the whole context so far, the doctor's output of
stage k, and the next stage instruction (docs/formulas.md, SPAR). Stages can be run one at a time (the
segmented pipeline of stage 1 runs different cases at different stages in one batch, with a
quality gate between stages) or all at once (`run_consultation`, used by the OSCE evaluation).

    doctor = ...   # async callable: list[chat message] -> DoctorReply (a policy, an endpoint)
    patient = PatientSimulator(...)                       # m3.clinic.patient.simulator
    transcript = await run_consultation(case, doctor, patient, EpisodeConfig(), rng)

Interruption-injected mode (the M2 simulator, kept by M3): a predefined snippet ending in an anxious
patient question is shown to the doctor only; the simulator never sees it.
  * which consultations: `plan_interruptions` over the case set, seeded: exactly
    round(interruption_rate x n) of them (25%), half of those mid-turn and half end-of-turn. Rows carry
    their plan (`extra_info["interruption"]`), so a verl worker needs no view of the whole set.
  * which turn: drawn online among the turns that occur, uniformly over the first half of the turn
    budget (W = ceil(max_inquiry_turns / 2) turns, where nearly every consultation still runs): at
    patient turn i < W it fires with probability 1 / (W - i); a turn known to be the last (the gate
    ends the dialogue) fires it if it has not fired. When the doctor closes the inquiry before the
    drawn turn, the patient interjects before it closes (end-of-turn) and the doctor answers once
    more, so every planned consultation is interrupted exactly once.
  * mid-turn splits the patient's reply between sentences, or between words for a one-sentence reply.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from m3.clinic.parse import parse_list
from m3.clinic.transcript import Transcript
from m3.text.lexical import split_sentences

SYSTEM_PROMPT = (
    "You are an experienced physician seeing a patient in an outpatient clinic. Be accurate, safe and "
    "concise, and follow each instruction about the current stage of the consultation."
)
STAGE_INSTRUCTIONS = {
    "inquiry": (
        'Stage 1 - history taking. The patient says: "{opening}"\n'
        "Ask the patient one focused question at a time. When you have gathered enough history, reply "
        "with exactly {end_marker}."
    ),
    "ddx": "Stage 2 - differential diagnosis. List your differential diagnoses, most likely first, as a "
    "numbered list of at most {max_ddx} diagnoses.",
    "lab": "Stage 3 - investigations. Which laboratory tests, imaging and examinations do you order? "
    "Answer with a numbered list of tests.",
    "diagnosis": "Stage 4 - diagnosis. Results of the investigations you ordered:\n{results}\n"
    "Give your reasoning briefly, then your final diagnosis on the last line as 'Final diagnosis: <diagnosis>'.",
}


@dataclass
class DoctorReply:
    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


Doctor = Callable[[list[dict]], Awaitable[DoctorReply]]


@dataclass
class PatientReply:
    text: str
    fact_ids: list[str] = field(default_factory=list)  # checklist facts this reply disclosed
    end: bool = False  # termination gate: the simulator ends the dialogue (e.g. a diagnosis was given)
    reason: str = ""


class Patient(Protocol):
    def opening(self, case) -> PatientReply: ...

    async def reply(self, case, transcript: Transcript, question: str) -> PatientReply: ...

    def interruption(self, case, rng: random.Random) -> str: ...


@dataclass
class EpisodeConfig:
    max_inquiry_turns: int = 10
    end_marker: str = "[END INQUIRY]"
    max_ddx: int = 5
    interruption_rate: float = 0.25  # the M2 simulator: 25% of dialogues (plan_interruptions)
    mid_turn_fraction: float = 0.5  # half of the interruptions land mid-turn

    def __post_init__(self) -> None:
        if self.max_inquiry_turns < 1:
            raise ValueError("max_inquiry_turns must be >= 1")
        if not 0 <= self.interruption_rate <= 1 or not 0 <= self.mid_turn_fraction <= 1:
            raise ValueError("interruption_rate and mid_turn_fraction must lie in [0, 1]")


MODES = ("mid_turn", "end_of_turn")


def plan_interruptions(case_ids: Sequence[str], cfg: EpisodeConfig, seed: int) -> dict[str, str | None]:
    """case_id -> "mid_turn" | "end_of_turn" | None over a case set, seeded: exactly
    round(interruption_rate * n) interrupted, round(mid_turn_fraction * k) of those mid-turn."""
    if len(set(case_ids)) != len(case_ids):
        raise ValueError("plan_interruptions needs distinct case ids (one plan entry per consultation)")
    k = round(cfg.interruption_rate * len(case_ids))
    n_mid = round(cfg.mid_turn_fraction * k)
    order = list(case_ids)
    random.Random(f"interruptions:{seed}").shuffle(order)
    modes = ["mid_turn"] * n_mid + ["end_of_turn"] * (k - n_mid) + [None] * (len(order) - k)
    return dict(zip(order, modes, strict=True))


def _fires(turn: int, cfg: EpisodeConfig, rng: random.Random, last: bool) -> bool:
    """Whether the planned interruption lands on patient turn `turn` (see the module docstring):
    uniform over the first half of the turn budget, where nearly every consultation still runs."""
    window = max(1, (cfg.max_inquiry_turns + 1) // 2)
    return last or turn >= window - 1 or rng.random() * (window - turn) < 1.0


def start(case, patient: Patient, cfg: EpisodeConfig) -> Transcript:
    """x_1: the system prompt and the inquiry instruction with the patient's opening statement."""
    t = Transcript(case_id=case.case_id, system_prompt=SYSTEM_PROMPT)
    opening = patient.opening(case)
    text = STAGE_INSTRUCTIONS["inquiry"].format(opening=opening.text, end_marker=cfg.end_marker)
    # the opening's facts are recorded: the inquiry station does not credit what the patient volunteered
    t.add("instruction", text, "inquiry", meta={"facts": list(opening.fact_ids)})
    return t


def split_turn(text: str) -> tuple[str, str]:
    """A reply cut in two for a mid-turn interruption: between sentences, else between words."""
    sents = split_sentences(text)
    if len(sents) >= 2:
        cut = len(sents) // 2
        return " ".join(sents[:cut]), " ".join(sents[cut:])
    words = text.split()
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " ".join(words[cut:])


def _inject(t: Transcript, reply: PatientReply, snippet: str, mode: str) -> None:
    """Add the patient's reply with the snippet (doctor-only) at its end or in its middle."""
    facts = {"facts": reply.fact_ids}
    head, tail = split_turn(reply.text) if mode == "mid_turn" else (reply.text, "")
    if not tail:  # a one-word reply has no middle: the snippet ends the turn
        mode = "end_of_turn"
    t.add("patient", head, "inquiry", meta=facts)
    t.add("interrupt", snippet, "inquiry", meta={"mode": mode})
    if tail:
        t.add("patient", tail, "inquiry", meta=dict(facts))
    t.interrupted = mode


async def run_inquiry(
    case,
    t: Transcript,
    doctor: Doctor,
    patient: Patient,
    cfg: EpisodeConfig,
    rng: random.Random,
    interruption: str | None = None,
) -> Transcript:
    """Doctor questions and patient answers until the doctor ends it, the gate ends it, or the turn
    limit; `interruption` (from `plan_interruptions`) injects one snippet at a turn that occurs."""
    if interruption not in (None, *MODES):
        raise ValueError(f"interruption must be one of {MODES} or None, got {interruption!r}")
    pending = interruption
    for turn in range(cfg.max_inquiry_turns):
        reply = await _ask(doctor, t)
        if cfg.end_marker in reply.text:
            if pending is None:
                t.ended_by = "doctor"
                return t
            # the patient interjects before the doctor closes; the doctor answers, then the inquiry ends
            t.add("interrupt", patient.interruption(case, rng), "inquiry", meta={"mode": "end_of_turn"})
            t.interrupted = "end_of_turn"
            await _ask(doctor, t)
            t.ended_by = "doctor"
            return t
        answer = await patient.reply(case, t, reply.text)
        if pending is not None and _fires(
            turn, cfg, rng, last=answer.end or turn == cfg.max_inquiry_turns - 1
        ):
            _inject(t, answer, patient.interruption(case, rng), pending)
            pending = None
        else:
            t.add("patient", answer.text, "inquiry", meta={"facts": answer.fact_ids})
        if answer.end:
            t.ended_by = f"gate:{answer.reason}"
            return t
    t.ended_by = "turn_limit"
    return t


async def _ask(doctor: Doctor, t: Transcript) -> DoctorReply:
    reply = await doctor(t.doctor_messages())
    t.add("doctor", reply.text, "inquiry", token_ids=reply.token_ids, logprobs=reply.logprobs)
    return reply


def lab_results_text(case, ordered: list[str]) -> str:
    """Results of the ordered tests, matched to the case's results through the test catalogue;
    tests the case has no result for are reported as normal/unavailable, as a real lab would."""
    from m3.clinic.labs import categorize_test

    wanted = {categorize_test(name) for name in ordered} - {"other"}
    lines = [f"- {r.name}: {r.value}" for r in case.test_results if r.category in wanted]
    missing = [
        name for name in ordered if categorize_test(name) not in {r.category for r in case.test_results}
    ]
    if missing:
        lines.append(f"- {', '.join(missing[:8])}: no abnormality reported")
    return "\n".join(lines) if lines else "- no tests were ordered"


async def run_stage(case, t: Transcript, stage: str, doctor: Doctor, cfg: EpisodeConfig) -> Transcript:
    """One single-turn stage (ddx, lab, diagnosis): x_{k+1} = [x_k, y_k, p_{k+1}] -> y_{k+1}."""
    if stage == "ddx":
        prompt = STAGE_INSTRUCTIONS["ddx"].format(max_ddx=cfg.max_ddx)
    elif stage == "lab":
        prompt = STAGE_INSTRUCTIONS["lab"]
    elif stage == "diagnosis":
        prompt = STAGE_INSTRUCTIONS["diagnosis"].format(
            results=lab_results_text(case, parse_list(t.stage_output("lab")))
        )
    else:
        raise ValueError(f"run_stage runs ddx, lab or diagnosis, not {stage!r} (use run_inquiry)")
    t.add("instruction", prompt, stage)
    reply = await doctor(t.doctor_messages())
    t.add("doctor", reply.text, stage, token_ids=reply.token_ids, logprobs=reply.logprobs)
    return t


async def run_consultation(
    case,
    doctor: Doctor,
    patient: Patient,
    cfg: EpisodeConfig,
    rng: random.Random,
    interruption: str | None = None,
) -> Transcript:
    """All four stages in order for one case (`interruption`: its entry of `plan_interruptions`)."""
    t = start(case, patient, cfg)
    await run_inquiry(case, t, doctor, patient, cfg, rng, interruption)
    for stage in ("ddx", "lab", "diagnosis"):
        await run_stage(case, t, stage, doctor, cfg)
    return t
