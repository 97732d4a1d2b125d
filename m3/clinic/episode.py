"""The four-stage consultation episode: Inquiry -> DDX -> Lab -> Diagnosis.

Stage k's input is x_{k+1} = [x_k, y_k, p_{k+1}]: the whole context so far, the doctor's output of
stage k, and the next stage instruction (PAPER.md, SPAR). Stages can be run one at a time (the
segmented pipeline of stage 1 runs different cases at different stages in one batch, with a
quality gate between stages) or all at once (`run_consultation`, used by the OSCE evaluation).

    doctor = ...   # async callable: list[chat message] -> DoctorReply (a policy, an endpoint)
    patient = PatientSimulator(...)                       # m3.clinic.simulator
    transcript = await run_consultation(case, doctor, patient, EpisodeConfig(), rng)

Interruption-injected mode (PAPER.md): in `interruption_rate` of dialogues a predefined snippet
ending in an anxious patient question is shown to the doctor only, half at the end of a patient
turn and half in the middle of it; the simulator never sees it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from m3.clinic.parse import parse_list
from m3.clinic.transcript import Transcript
from m3.text import split_sentences

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
    interruption_rate: float = 0.25  # PAPER.md: 25% of dialogues
    mid_turn_fraction: float = 0.5  # half of the interruptions land mid-turn

    def __post_init__(self) -> None:
        if self.max_inquiry_turns < 1:
            raise ValueError("max_inquiry_turns must be >= 1")
        if not 0 <= self.interruption_rate <= 1 or not 0 <= self.mid_turn_fraction <= 1:
            raise ValueError("interruption_rate and mid_turn_fraction must lie in [0, 1]")


def plan_interruption(cfg: EpisodeConfig, rng: random.Random) -> tuple[str | None, int]:
    """(mode, turn): mode None (no interruption), "end_of_turn" or "mid_turn"; the patient turn it hits."""
    if rng.random() >= cfg.interruption_rate:
        return None, -1
    mode = "mid_turn" if rng.random() < cfg.mid_turn_fraction else "end_of_turn"
    return mode, rng.randrange(cfg.max_inquiry_turns)


def start(case, patient: Patient, cfg: EpisodeConfig) -> Transcript:
    """x_1: the system prompt and the inquiry instruction with the patient's opening statement."""
    t = Transcript(case_id=case.case_id, system_prompt=SYSTEM_PROMPT)
    opening = patient.opening(case)
    text = STAGE_INSTRUCTIONS["inquiry"].format(opening=opening.text, end_marker=cfg.end_marker)
    # the opening's facts are recorded: the inquiry station does not credit what the patient volunteered
    t.add("instruction", text, "inquiry", meta={"facts": list(opening.fact_ids)})
    return t


def _inject(t: Transcript, reply: PatientReply, snippet: str, mode: str) -> None:
    """Add the patient's reply with the snippet (doctor-only) at its end or in its middle."""
    facts = {"facts": reply.fact_ids}
    sents = split_sentences(reply.text)
    if mode == "mid_turn" and len(sents) >= 2:
        cut = len(sents) // 2
        t.add("patient", " ".join(sents[:cut]), "inquiry", meta=facts)
        t.add("interrupt", snippet, "inquiry", meta={"mode": mode})
        t.add("patient", " ".join(sents[cut:]), "inquiry", meta=dict(facts))
        return
    t.add("patient", reply.text, "inquiry", meta=facts)
    # a one-sentence reply cannot be split: the snippet then ends the turn
    t.add("interrupt", snippet, "inquiry", meta={"mode": mode if len(sents) >= 2 else "end_of_turn"})


async def run_inquiry(
    case, t: Transcript, doctor: Doctor, patient: Patient, cfg: EpisodeConfig, rng: random.Random
) -> Transcript:
    """Doctor questions and patient answers until the doctor ends it, the gate ends it, or the turn limit."""
    mode, at = plan_interruption(cfg, rng)
    for turn in range(cfg.max_inquiry_turns):
        reply = await doctor(t.doctor_messages())
        t.add("doctor", reply.text, "inquiry", token_ids=reply.token_ids, logprobs=reply.logprobs)
        if cfg.end_marker in reply.text:
            t.ended_by = "doctor"
            return t
        answer = await patient.reply(case, t, reply.text)
        if mode is not None and turn == at:
            _inject(t, answer, patient.interruption(case, rng), mode)
            t.interrupted = mode  # only dialogues that reached the planned turn count as interrupted
        else:
            t.add("patient", answer.text, "inquiry", meta={"facts": answer.fact_ids})
        if answer.end:
            t.ended_by = f"gate:{answer.reason}"
            return t
    t.ended_by = "turn_limit"
    return t


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
    case, doctor: Doctor, patient: Patient, cfg: EpisodeConfig, rng: random.Random
) -> Transcript:
    """All four stages in order for one case."""
    t = start(case, patient, cfg)
    await run_inquiry(case, t, doctor, patient, cfg, rng)
    for stage in ("ddx", "lab", "diagnosis"):
        await run_stage(case, t, stage, doctor, cfg)
    return t
