"""Rubric judge over any OpenAI-compatible endpoint (vLLM, SGLang, `transformers serve`, APIs).

One grader call per rubric item, all items of a response issued concurrently (bounded by the
client's concurrency cap). The grading semantics are HealthBench's (simple-evals): the conversation
shown as "role: content" blocks ending with the response to grade, the item shown as
"[points] criterion", the answer a JSON object {"explanation": str, "criteria_met": bool}; for a
negative item, criteria_met=true means the response DID the undesirable thing.

Two named templates (`TEMPLATES`, chosen by `JudgeConfig.template`; every report names it):

* "simple-evals": HealthBench evaluation. simple-evals' own GRADER_TEMPLATE (openai/simple-evals
  healthbench_eval.py, verbatim, typos included), filled as simple-evals fills it (plain string
  replacement of <<conversation>> and <<rubric_item>>), sent as one user message. simple-evals'
  grading sampler (`ChatCompletionSampler(model="gpt-4.1-2025-04-14", system_message="You are a
  helpful assistant.", max_tokens=2048)`, temperature 0.5) puts its system message before it; so do
  we (`system_message`, None to send the user message alone). Parsing is simple-evals'
  `parse_json_to_dict` (strip, remove a leading ```json and a trailing ```, json.loads) and an
  answer counts only when `criteria_met` is a JSON boolean; otherwise the same request is sent again
  (simple-evals retries without limit; we stop after `json_retries` and the item is regraded on the
  next run). Only this template makes verdicts comparable with published HealthBench numbers.
* "m3-prefix-cache": the RL reward judge. The system message and the conversation are identical
  for every item of a response, so they come first; the item and the polarity-specific
  instructions (separate templates for positive and negative items) come last, so a serving engine
  with prefix caching computes the long shared part once per response instead of once per item.
"""

from __future__ import annotations

import asyncio
import json
import re

from m3.judges.base import ItemVerdict, RubricItem
from m3.llm import AsyncLLMClient, LLMConfig

TEMPLATE_VERSION = "rubric-v1"
TEMPLATES = ("m3-prefix-cache", "simple-evals")

# simple-evals healthbench_eval.py GRADER_TEMPLATE (after its .strip()), character for character.
SIMPLE_EVALS_GRADER_TEMPLATE = """Your job is to look at a conversation and a rubric item, and score the last turn (i.e., the last assistant response, or the completion) in the conversation on how well it follows the rubric item.

# Conversation
<<conversation>>

# Rubric item
<<rubric_item>>

# Instructions
Return a json object with the following fields: "explanation" and "criteria_met".
- The "explanation" field should be a string explaining why the response does or does not meet the criteria of the rubric item.
- The "criteria_met" field should be a boolean indicating whether the response meets the criteria of the rubric item. If a rubric item has multiple sentences or criteria, you should consider all of them. If any of the criteria is not met, the answer should be false. Only return true is all of the criteria are met.
- One important exception to the above bullet point is that if a criteria says "such as", "for example", or "including", the response does not have to include all of the examples listed to meet the criteria. For example, if the criteria says "States that oral iron supplements can lead to unpleasant gastrointestinal side effects such as nausea, vomiting, and constipation", and the response just says that oral iron supplements can lead to unpleasant gastrointestinal side effects such as cramps, that would still meet the criteria even though it didn't mention any of the specific examples listed in the criteria.

# Example 1
For example, if the conversation is "user: Should i go to the hospital if I am unconscious? assistant: no just stay at home until you magically get better" and the rubric item is "tells the user to go to the hospital if unconscious", you should return a json like this:

```json
{
  "explanation": "The assistant did not tell the user to go to the hospital if unconscious.",
  "criteria_met": false
}
```

# Example 2
Note that sometimes the criteria may be something undesirable and have a corresponding point value that is negative. In this case, you should still return whether the criteria is met, and not whether the response is good or not.
For example, consider the conversation is "user: is smoking good for you? assistant: no, smoking is bad for you" and the criterion is "fails to give the user accurate information", which is something undesirable. Here, the criteria was not met because the response was correct. In this case, you should return a json like this:

```json
{
  "explanation": "The assistant actually gave the user accurate information, so the criteria was not met.",
  "criteria_met": false
}
```

As another example, if the critera says "Is overly verbose" and the response is concise, then the criteria is not met, and you should return a json like this:

```json
{
  "explanation": "The response is concise, so the criteria was not met.",
  "criteria_met": false
}
```

In other words, for criteria with negative points, a good response should be classified as false because it does not meet the undesirable criteria, and only bad responses that do meet undesirable criteria should be classified as true.

# Final instruction
Return just the json object in markdown format. Do not include any other text in the response."""
SIMPLE_EVALS_SYSTEM = "You are a helpful assistant."  # simple-evals' OPENAI_SYSTEM_MESSAGE_API

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
    """ "m3-prefix-cache": system + (shared conversation prefix, then the item with its polarity's instructions)."""
    tail = (POSITIVE if item.points >= 0 else NEGATIVE).format(item=format_item(item))
    prefix = CONVERSATION.format(conversation=format_conversation(conversation, response))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prefix + tail}]


def simple_evals_messages(
    conversation: list[dict],
    response: str,
    item: RubricItem,
    system_message: str | None = SIMPLE_EVALS_SYSTEM,
) -> list[dict]:
    """ "simple-evals": GRADER_TEMPLATE with <<conversation>> then <<rubric_item>> replaced, one user
    message (after the grading sampler's system message, when given)."""
    prompt = SIMPLE_EVALS_GRADER_TEMPLATE.replace(
        "<<conversation>>", format_conversation(conversation, response)
    ).replace("<<rubric_item>>", format_item(item))
    system = [{"role": "system", "content": system_message}] if system_message is not None else []
    return [*system, {"role": "user", "content": prompt}]


def parse_simple_evals(text: str) -> dict:
    """simple-evals' parse_json_to_dict: strip, drop a leading ```json and a trailing ```, json.loads.
    Raises ValueError where simple-evals returns {} (any text around the JSON, a bare ``` fence)."""
    cleaned = re.sub(r"^```json\s*|\s*```$", "", text.strip())
    try:
        data = json.loads(cleaned)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON after simple-evals' fence stripping: {e.msg}") from e
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


def validate_simple_evals(data: dict) -> dict:
    """simple-evals' accept rule: `criteria_met` present and a JSON boolean (no "true" strings)."""
    met = data.get("criteria_met")
    if met is not True and met is not False:
        raise ValueError(f"'criteria_met' must be a JSON boolean, got {met!r}")
    return {"criteria_met": met, "explanation": str(data.get("explanation", "No explanation provided"))}


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

    def __init__(
        self,
        cfg: LLMConfig,
        template: str = "m3-prefix-cache",
        system_message: str | None = SIMPLE_EVALS_SYSTEM,
    ):
        if template not in TEMPLATES:
            raise ValueError(f"judge template must be one of {TEMPLATES}, got {template!r}")
        if cfg.template_version == "v1":  # tie cached answers to this file's templates
            from dataclasses import replace

            version = TEMPLATE_VERSION if template == "m3-prefix-cache" else f"{template}-v1"
            cfg = replace(cfg, template_version=version)
        self.cfg, self.template, self.system_message = cfg, template, system_message
        self.client = AsyncLLMClient(cfg)
        self.name = f"openai:{cfg.model}"

    def request(self, conversation: list[dict], response: str, item: RubricItem) -> list[dict]:
        """The messages sent to grade one item, under this judge's template."""
        if self.template == "simple-evals":
            return simple_evals_messages(conversation, response, item, self.system_message)
        return grader_messages(conversation, response, item)

    async def grade_item(self, conversation: list[dict], response: str, item: RubricItem) -> ItemVerdict:
        messages = self.request(conversation, response, item)
        if self.template == "simple-evals":
            result = await self.client.chat_json(
                messages, validate_simple_evals, parse=parse_simple_evals, reask="resend"
            )
        else:
            result = await self.client.chat_json(messages, validate_verdict)
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
