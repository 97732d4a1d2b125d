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

    with FakeOpenAIServer(responder, delay_s=0.3) as srv:
        judge = OpenAIRubricJudge(LLMConfig(model="fake-model", base_url=srv.base_url, max_concurrency=16))

        async def go():
            t0 = time.perf_counter()
            score = await RubricVerifier(judge).score(CONV, "Give aspirin.", ITEMS)
            await judge.aclose()
            return score, time.perf_counter() - t0

        score, wall = asyncio.run(go())
        assert srv.max_in_flight == 3 and wall < 0.6  # all items at once, not 3 x 0.3 s
    assert [v.criteria_met for v in score.verdicts] == [True, True, False]
    # (5 - 9 + 9) / 17
    assert abs(score.reward - 5 / 17) < 1e-12 and judge.name == "openai:fake-model"
