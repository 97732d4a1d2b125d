"""The one think-tag rule (m3.text.reasoning): last closing tag, unclosed tags, no tags."""

import pytest

from m3.text.reasoning import answer_text, split_reasoning


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        (
            "<think>fever: rule out sepsis</think>\n\nSee a doctor today.",
            "fever: rule out sepsis",
            "See a doctor today.",
        ),
        # the template opened <think> in the prompt: only the closing tag is in the completion
        ("fever: rule out sepsis</think>See a doctor.", "fever: rule out sepsis", "See a doctor."),
        # closing twice: the answer is what follows the LAST closing tag
        ("<think>a</think>shown? <think>b</think> final", "a shown? b", "final"),
        # cut off inside the reasoning: no answer yet
        ("<think>still thinking", "still thinking", ""),
        # an unclosed block after some text: the text before it is the answer
        ("Rest and fluids. <think>maybe", "maybe", "Rest and fluids."),
        # no tags (models without a thinking mode): all answer
        ("  Rest and fluids.  ", "", "Rest and fluids."),
        ("", "", ""),
    ],
)
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)
    assert answer_text(text) == answer
