"""The OpenAI-compatible rubric judge over real HTTP: prompt layout, polarity templates, concurrency."""

from __future__ import annotations

import asyncio
import time

from m3.judges.base import RubricItem
from m3.judges.openai_judge import OpenAIRubricJudge, format_conversation, grader_messages
from m3.judges.rubric import RubricVerifier
from m3.llm import LLMConfig
from tests.fakes.openai_server import FakeOpenAIServer, json_answer

CONV = [{"role": "user", "content": "My child has a fever of 39 C."}]
ITEMS = [
    RubricItem("Asks about the child's age.", 5),
    RubricItem("Recommends aspirin for the child.", -9),
    RubricItem("Mentions danger signs such as lethargy.", 3),
]


def test_prompt_layout_shared_prefix_first_item_last():
    msgs = [grader_messages(CONV, "Give paracetamol.", it) for it in ITEMS]
    assert all(m[0] == msgs[0][0] for m in msgs)  # identical system message
    users = [m[1]["content"] for m in msgs]
    head = "# Conversation\nuser: My child has a fever of 39 C.\n\nassistant: Give paracetamol.\n\n# Rubric item\n"
    assert all(u.startswith(head) for u in users)  # the long shared part comes first
    assert users[0][len(head) :].startswith("[5] Asks about the child's age.")
    assert users[1][len(head) :].startswith("[-9] Recommends aspirin for the child.")
    assert "UNDESIRABLE" in users[1] and "UNDESIRABLE" not in users[0]  # polarity templates differ
    assert format_conversation(CONV, "x") == "user: My child has a fever of 39 C.\n\nassistant: x"


def test_items_graded_concurrently_and_parsed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")

    def responder(req):
        text = req["messages"][1]["content"].split("# Rubric item")[1]
        return json_answer(explanation="e", criteria_met="aspirin" in text or "child's age" in text)

    with FakeOpenAIServer(responder, delay_s=0.5) as srv:
        judge = OpenAIRubricJudge(LLMConfig(model="fake-model", base_url=srv.base_url, max_concurrency=16))

        async def go():
            t0 = time.perf_counter()
            score = await RubricVerifier(judge).score(CONV, "Give aspirin.", ITEMS)
            await judge.aclose()
            return score, time.perf_counter() - t0

        score, wall = asyncio.run(go())
        # all at once: 3 x 0.5 s in turn would take 1.5 s (slack for a loaded VM)
        assert srv.max_in_flight == 3 and wall < 1.2
    assert [v.criteria_met for v in score.verdicts] == [True, True, False]
    # (5 - 9 + 9) / 17
    assert abs(score.reward - 5 / 17) < 1e-12 and judge.name == "openai:fake-model"


# --- simple-evals' grader template (HealthBench evaluation) ---------------------------------------
GRADER_TEMPLATE_HEAD = (
    "Your job is to look at a conversation and a rubric item, and score the last turn (i.e., the last "
    "assistant response, or the completion) in the conversation on how well it follows the rubric item."
    "\n\n# Conversation\n<<conversation>>\n\n# Rubric item\n<<rubric_item>>\n\n# Instructions\n"
)


def test_simple_evals_template_is_verbatim():
    import hashlib

    from m3.judges.openai_judge import SIMPLE_EVALS_GRADER_TEMPLATE

    assert SIMPLE_EVALS_GRADER_TEMPLATE.startswith(GRADER_TEMPLATE_HEAD)
    # sha256 of simple-evals' GRADER_TEMPLATE.strip() at openai/simple-evals ee3b031 (typos included)
    digest = hashlib.sha256(SIMPLE_EVALS_GRADER_TEMPLATE.encode()).hexdigest()
    assert digest == "2adffd51fd259554ebcd036ad1072d4aa2b7ce3aec2bbffe36271f911632ed3c"
    assert "Only return true is all of the criteria are met" in SIMPLE_EVALS_GRADER_TEMPLATE


def test_simple_evals_request_equals_the_template_filled_by_hand():
    from m3.judges.openai_judge import SIMPLE_EVALS_GRADER_TEMPLATE

    judge = OpenAIRubricJudge(LLMConfig(model="m", base_url="http://127.0.0.1:9/v1"), template="simple-evals")
    conv = [{"role": "user", "content": "I have a cough."}, {"role": "assistant", "content": "Since when?"},
            {"role": "user", "content": "Two days."}]  # fmt: skip
    item = RubricItem("Advises rest.", 5.0)  # points are floats here; simple-evals prints the JSON int
    by_hand = SIMPLE_EVALS_GRADER_TEMPLATE.replace(
        "<<conversation>>",
        "user: I have a cough.\n\nassistant: Since when?\n\nuser: Two days.\n\nassistant: Rest and fluids.",
    ).replace("<<rubric_item>>", "[5] Advises rest.")
    assert judge.request(conv, "Rest and fluids.", item) == [
        {"role": "system", "content": "You are a helpful assistant."},  # simple-evals' grading sampler
        {"role": "user", "content": by_hand},
    ]
    bare = OpenAIRubricJudge(
        LLMConfig(model="m", base_url="http://127.0.0.1:9/v1"), template="simple-evals", system_message=None
    )
    assert bare.request(conv, "Rest and fluids.", RubricItem("Gives a dose.", -3)) == [
        {"role": "user", "content": by_hand.replace("[5] Advises rest.", "[-3] Gives a dose.")}
    ]


def test_simple_evals_parse_and_retry(monkeypatch):
    """Only a JSON boolean counts; a bad answer is re-sent unchanged (no correction message)."""
    from m3.judges.openai_judge import parse_simple_evals

    assert parse_simple_evals('```json\n{"criteria_met": true}\n```')["criteria_met"] is True
    for bad in ('Sure: {"criteria_met": true}', '```\n{"criteria_met": true}\n```'):
        try:
            parse_simple_evals(bad)  # simple-evals returns {} for these: no fallback extraction
            raise AssertionError(bad)
        except ValueError:
            pass
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456789")
    answers = iter(
        ['{"criteria_met": "true"}', "not json", '```json\n{"explanation": "ok", "criteria_met": false}\n```']
    )
    with FakeOpenAIServer(lambda req: next(answers)) as srv:
        judge = OpenAIRubricJudge(
            LLMConfig(model="fake", base_url=srv.base_url, json_retries=3, cache_path=None),
            template="simple-evals",
        )

        async def go():
            verdict = await judge.grade_item(CONV, "Give paracetamol.", ITEMS[0])
            await judge.aclose()
            return verdict

        verdict = asyncio.run(go())
        requests = [r["messages"] for r in srv.requests]
    assert verdict.criteria_met is False and verdict.explanation == "ok"
    assert len(requests) == 3 and requests[0] == requests[1] == requests[2]  # resent unchanged
