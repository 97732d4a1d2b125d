"""The patient simulator's LLM backend: prompt, validation, and a re-ask when the factual check fails.

The prompt (`build_messages`) holds the patient profile (demographics and history facts with their
ids; never the diagnosis, exam findings or test results, so the model cannot leak what it was never
told), the behavioural rules and the dialogue the simulator may see (`Transcript.patient_messages`:
no interruptions). The answer is JSON {"reply": str, "fact_ids": [ids of the facts it discloses]},
validated (ids must exist; an invalid answer is re-asked by `AsyncLLMClient.chat_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from m3.clinic.patient.guards import check_reply
from m3.clinic.patient.persona import PERSONA_SELF

if TYPE_CHECKING:
    from m3.clinic.cases import ClinicalCase
    from m3.clinic.transcript import Transcript
    from m3.llm import AsyncLLMClient

# --- the LLM backend -----------------------------------------------------------------------------

SYSTEM_PROMPT = """You are role-playing {who} in a doctor's office, for the training of doctors.
Rules:
1. Answer only what the doctor asks, in one or two short sentences of plain, lay language, in the first person.
2. Never volunteer anything the doctor did not ask about, even if it is in your profile.
3. Use only the facts of your profile. If the profile does not answer the question, say you don't know or are not sure; never invent symptoms, negatives or history.
4. You do not know your diagnosis. Never name or guess a disease; if asked what you think you have, say you don't know.
5. You know no examination findings or test results; if asked, say the doctor would have to examine or test you.
6. Never contradict your profile.

Your profile:
{profile}

Answer with one JSON object only: {{"reply": "<what you say to the doctor>", "fact_ids": [<ids of the profile facts your reply discloses, e.g. "h2">]}}"""
RETRY_PROMPT = (
    "Your answer broke the rules: {problems}. Answer the doctor's question again following every rule; "
    "JSON only."
)


def profile_text(case: ClinicalCase) -> str:
    """Demographics and history facts with their ids: what the patient knows about itself."""
    lines = [f"- {case.demographics.text}"] if case.demographics.text else []
    lines += [f"- {f.id}: {f.text}" for f in case.history]
    return "\n".join(lines)


def build_messages(
    case: ClinicalCase, persona: str, transcript: Transcript | None, question: str
) -> list[dict[str, str]]:
    """System prompt (profile + rules) and one user turn: the dialogue so far and the new question."""
    who = (
        "a patient" if persona == PERSONA_SELF else "the parent of a young patient, answering for your child"
    )
    history = transcript.patient_messages() if transcript is not None else []
    if history and history[-1]["role"] == "user" and history[-1]["content"] == question:
        history = history[:-1]  # episode.run_inquiry adds the question before asking for the reply
    lines = [f"{'Doctor' if m['role'] == 'user' else 'You'}: {m['content']}" for m in history]
    dialogue = "\n".join(lines) if lines else "(this is the first question)"
    user = (
        f"Dialogue so far:\n{dialogue}\n\nThe doctor now says: {question}\n\nAnswer as the patient, in JSON."
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(who=who, profile=profile_text(case))},
        {"role": "user", "content": user},
    ]


def make_validator(case: ClinicalCase):
    """JSON schema check for `AsyncLLMClient.chat_json`: a non-empty reply and existing fact ids."""
    ids = {f.id for f in case.history}

    def validate(data: dict) -> dict:
        reply = data.get("reply")
        if not isinstance(reply, str) or not reply.strip():
            raise ValueError('"reply" must be a non-empty string')
        fact_ids = data.get("fact_ids", [])
        if not isinstance(fact_ids, list) or not all(isinstance(x, str) for x in fact_ids):
            raise ValueError('"fact_ids" must be a list of fact id strings such as ["h2"]')
        unknown = [x for x in fact_ids if x not in ids]
        if unknown:
            raise ValueError(f"unknown fact ids {unknown}: use only ids listed in the profile")
        return {"reply": reply.strip(), "fact_ids": list(dict.fromkeys(fact_ids))}

    return validate


@dataclass
class LLMOutcome:
    text: str = ""
    fact_ids: list[str] = field(default_factory=list)
    retries: int = 0  # re-asks after a failed factual check
    why: str = ""  # set when no usable answer came back (the caller answers offline)

    @property
    def ok(self) -> bool:
        return not self.why


async def ask_llm(
    client: AsyncLLMClient, case: ClinicalCase, messages: list[dict], question: str, check_retries: int
) -> LLMOutcome:
    """An LLM answer that passes `check_reply`, re-asked up to `check_retries` times with the problems."""
    validate = make_validator(case)
    conversation = list(messages)
    for attempt in range(check_retries + 1):
        result = await client.chat_json(conversation, validate)
        if not result.ok or result.data is None:
            return LLMOutcome(retries=attempt, why=f"endpoint: {result.error}")
        reply, fact_ids = result.data["reply"], result.data["fact_ids"]
        problems = check_reply(case, reply, fact_ids, question=question)
        if not problems:
            return LLMOutcome(reply, fact_ids, retries=attempt)
        if attempt == check_retries:
            return LLMOutcome(retries=attempt, why="; ".join(problems))
        conversation = conversation + [
            {"role": "assistant", "content": result.raw_text},
            {"role": "user", "content": RETRY_PROMPT.format(problems="; ".join(problems))},
        ]
    raise AssertionError("unreachable: the loop returns on its last attempt")
