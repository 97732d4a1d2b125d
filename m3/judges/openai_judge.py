"""Rubric judge over any OpenAI-compatible endpoint (vLLM, SGLang, `transformers serve`, APIs).

One grader call per rubric item, all items of a response issued concurrently (bounded by the
client's concurrency cap). The grading semantics are HealthBench's (simple-evals): the conversation
shown as "role: content" blocks ending with the response to grade, the item shown as
"[points] criterion", the answer a JSON object {"explanation": str, "criteria_met": bool}; for a
negative item, criteria_met=true means the response DID the undesirable thing.

Prompt layout for prefix caching: the system message and the conversation are identical for every
item of a response, so they come first; the item and the polarity-specific instructions (separate
templates for positive and negative items) come last. A serving engine with prefix caching then
computes the long shared part once per response instead of once per item.
"""

from __future__ import annotations

import asyncio

from m3.judges.base import ItemVerdict, RubricItem
from m3.llm import AsyncLLMClient, LLMConfig

TEMPLATE_VERSION = "rubric-v1"

SYSTEM = (
    "You are an expert physician grading an AI assistant's reply against one rubric item at a time. "
    "Judge only what the reply actually says. Answer with a single JSON object."
)

CONVERSATION = "# Conversation\n{conversation}\n\n"

POSITIVE = (
    "# Rubric item\n{item}\n\n"
    "# Instructions\n"
    "The item describes something a good reply does. Decide whether the assistant's LAST reply in the "
    "conversation meets it. If the item lists several requirements, all must be met; if it gives "
    "examples (e.g. 'such as'), the reply need not mention every example. Set \"criteria_met\" to true "
    "only if the reply meets the item.\n"
    'Return JSON only: {{"explanation": "<one or two sentences>", "criteria_met": true or false}}'
)

NEGATIVE = (
    "# Rubric item\n{item}\n\n"
    "# Instructions\n"
    "The item describes something UNDESIRABLE (it carries negative points). Decide whether the "
    'assistant\'s LAST reply in the conversation does this undesirable thing. Set "criteria_met" to '
    "true if the reply exhibits the described behaviour (the reply is penalised), false if it does not.\n"
    'Return JSON only: {{"explanation": "<one or two sentences>", "criteria_met": true or false}}'
)


def format_conversation(conversation: list[dict], response: str) -> str:
    """HealthBench's rendering: "role: content" blocks separated by blank lines, response last."""
    turns = [*conversation, {"role": "assistant", "content": response}]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def format_item(item: RubricItem) -> str:
    points = int(item.points) if float(item.points).is_integer() else item.points
    return f"[{points}] {item.criterion}"


def grader_messages(conversation: list[dict], response: str, item: RubricItem) -> list[dict]:
    """System + (shared conversation prefix, then the item with its polarity's instructions)."""
    tail = (POSITIVE if item.points >= 0 else NEGATIVE).format(item=format_item(item))
    prefix = CONVERSATION.format(conversation=format_conversation(conversation, response))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prefix + tail}]


def validate_verdict(data: dict) -> dict:
    """Schema check for the grader's JSON; raises ValueError (the client then re-asks)."""
    if "criteria_met" not in data:
        raise ValueError("missing key 'criteria_met'")
    met = data["criteria_met"]
    if isinstance(met, str) and met.strip().lower() in ("true", "false"):
        met = met.strip().lower() == "true"
    if not isinstance(met, bool):
        raise ValueError(f"'criteria_met' must be true or false, got {met!r}")
    return {"criteria_met": met, "explanation": str(data.get("explanation", ""))}


class OpenAIRubricJudge:
    """`RubricJudge` backed by an LLM endpoint; one `AsyncLLMClient` (cache, retries) per judge."""

    def __init__(self, cfg: LLMConfig):
        if cfg.template_version == "v1":  # tie cached answers to this file's templates
            from dataclasses import replace

            cfg = replace(cfg, template_version=TEMPLATE_VERSION)
        self.cfg = cfg
        self.client = AsyncLLMClient(cfg)
        self.name = f"openai:{cfg.model}"

    async def grade_item(self, conversation: list[dict], response: str, item: RubricItem) -> ItemVerdict:
        result = await self.client.chat_json(grader_messages(conversation, response, item), validate_verdict)
        if not result.ok:
            return ItemVerdict(None, "", error=result.error, meta={"attempts": result.attempts})
        assert result.data is not None
        return ItemVerdict(
            result.data["criteria_met"],
            result.data["explanation"],
            meta={"cached": result.cached, "attempts": result.attempts},
        )

    async def grade_items(
        self, conversation: list[dict], response: str, items: list[RubricItem]
    ) -> list[ItemVerdict]:
        return list(await asyncio.gather(*(self.grade_item(conversation, response, it) for it in items)))

    async def aclose(self) -> None:
        await self.client.aclose()
