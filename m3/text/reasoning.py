"""Reasoning blocks: split a completion into its `<think>` reasoning and the answer, one rule for all.

    from m3.text.reasoning import split_reasoning, answer_text
    split_reasoning("<think>fever, check for sepsis</think>See a doctor today.")
        # -> ("fever, check for sepsis", "See a doctor today.")
    answer_text("<think>still thinking")     # -> ""   (cut off inside the reasoning: no answer yet)

Rules (decided once; the judges, rewards, agent loop, evaluations and the serve smoke test all use them):
- the answer follows the LAST `</think>`; everything before it is reasoning (the `<think>` tags
  removed). Qwen3's chat template may open `<think>` in the prompt, so only the closing tag is relied
  on, and a policy cannot hide reasoning-like text in its answer by closing twice: what precedes the
  final closing tag is never scored as the answer.
- an opened `<think>` that is never closed (the completion was cut off by max_tokens): what follows
  it is reasoning, the answer is the text before it (empty when the completion starts thinking).
- no tags: all answer, no reasoning. Models without a thinking mode (the real preset's SmolLM2)
  always take this path.
vLLM's and SGLang's `qwen3` reasoning parsers give the same split for a single think block.
Run: `pytest tests/m3/text/test_reasoning.py`.
"""

from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a completion, both stripped (rules in the module docstring)."""
    if THINK_END in text:
        head, answer = text.rsplit(THINK_END, 1)
        return _join_without_tags(head), answer.strip()
    if THINK_START in text:
        before, reasoning = text.split(THINK_START, 1)
        return reasoning.strip(), before.strip()
    return "", text.strip()


def _join_without_tags(text: str) -> str:
    pieces = text.replace(THINK_END, THINK_START).split(THINK_START)
    return " ".join(p.strip() for p in pieces if p.strip())


def answer_text(text: str) -> str:
    """The answer part of a completion: what is scored, shown to the patient, or graded."""
    return split_reasoning(text)[1]
