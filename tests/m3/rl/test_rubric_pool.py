"""Dynamic rubric evolution on hand-made rollouts: mine, verify, admit, inject, retire; rare flaws stay
out; near-duplicates merge; malformed candidates are rejected with their reason; MLflow round trip."""

from __future__ import annotations

import asyncio
import json

import pytest

from m3.judges.base import RubricItem
from m3.judges.offline import OfflineRubricJudge
from m3.rl.rubric_miner import Rollout, RubricEvolution, dedup, flaws_of, offline_candidates
from m3.rl.rubric_pool import (
    Candidate,
    DynamicRubricConfig,
    RubricPool,
    active_counts,
    plot_history,
    validate_candidate,
)
from tests.fakes.facts import DOSE, WRONG, ScriptedFacts

PROMPT = [{"role": "user", "content": "I have a runny nose and a sore throat. What should I take?"}]
CORE = [RubricItem("Advises rest and fluids.", 5), RubricItem("Recommends antibiotics.", -5)]


def rollouts(step: int, n: int, flawed: int, claim: str = WRONG, r_task: float = 0.9) -> list[Rollout]:
    """n responses of one step; the first `flawed` state `claim` (all score high on the rubric, and none
    hits its negative item: the claim is the only flaw; a hit core item is the last test's subject)."""
    core = [CORE[0], RubricItem("Recommends aspirin for a child.", -5)]
    out = []
    for i in range(n):
        text = "Rest and drink fluids. Rest helps recovery." + (f" {claim}" if i < flawed else "")
        out.append(Rollout(f"s{step}-{i}", PROMPT, text, r_task - 0.01 * i, core))
    return out


def evolution(tmp_path, **kw) -> RubricEvolution:
    cfg = DynamicRubricConfig(
        dynamic=True, window=2, admit_frequency=0.3, min_support=2, retire_epochs=2, **kw
    )
    return RubricEvolution(
        cfg, tmp_path / "pool.json", fact_reward=ScriptedFacts(), judge=OfflineRubricJudge()
    )


def test_frequent_flaw_is_mined_admitted_injected_then_retired(tmp_path):
    evo = evolution(tmp_path, top_quantile=0.0)

    async def run():
        await evo.step(1, rollouts(1, 4, 3))  # 3 of 4 top responses state the wrong claim
        await evo.step(2, rollouts(2, 4, 2))
        await evo.end_epoch(1, 2)

    asyncio.run(run())
    (item,) = evo.pool.active()
    assert item.criterion == f"States the incorrect claim: {WRONG}" and item.points == -6
    assert item.failure_mode.startswith("refuted:") and {"s1-0", "s2-1"} <= set(item.evidence)
    admitted = [e for e in evo.pool.history if e["event"] == "admitted"]
    assert admitted[0]["item"] == item.id and "in 62% of responses" in admitted[0]["why"]  # 5 of 8
    # injection: the next rows carry the active item, and eq. 1 counts it
    (row,) = evo.row_items(PROMPT[0]["content"])
    assert row == {"criterion": item.criterion, "points": -6.0, "tags": ["dynamic", item.id]}
    # the policy stops making the claim: satisfied two epochs in a row -> retired
    for epoch, step in ((2, 3), (3, 4)):
        asyncio.run(evo.step(step, rollouts(step, 4, 0)))
        satisfaction = asyncio.run(evo.end_epoch(epoch, step))
        assert satisfaction[item.id] == (4, 4)
    assert evo.pool.items[item.id].status == "retired" and evo.pool.items[item.id].retired_epoch == 3
    assert evo.row_items(PROMPT[0]["content"]) == []
    assert (
        json.loads((tmp_path / "pool.json").read_text())["version"] == evo.pool.version
    )  # saved each update
    # the history as counts per step (admitted at step 2, retired at step 4) and as a plot
    assert active_counts(evo.pool.history) == [(2, 1, 0, 1), (4, 1, 1, 0)]
    assert plot_history(evo.pool.history, tmp_path / "pool.png").stat().st_size > 0


def test_rare_flaw_is_not_admitted(tmp_path):
    evo = evolution(tmp_path, top_quantile=0.0)

    async def run():
        await evo.step(1, rollouts(1, 8, 1))  # 1 of 8: below min_support and the frequency
        await evo.step(2, rollouts(2, 8, 0))
        await evo.end_epoch(1, 2)

    asyncio.run(run())
    assert evo.pool.active() == [] and [it.status for it in evo.pool.items.values()] == ["candidate"]


def test_only_high_scoring_responses_are_mined(tmp_path):
    evo = evolution(tmp_path, top_quantile=0.75)
    low = rollouts(1, 4, 4, r_task=0.2)
    for r in low[1:]:
        r.r_task = 0.1  # the flaw shows in the top quarter only once
    flaws = asyncio.run(evo.flaws(low))
    assert {f.response_id for f in flaws} == {"s1-0"}


def test_flaw_signatures_offline():
    r = Rollout(
        "r1", [{"role": "user", "content": "I have chest pain and feel faint."}], f"Rest. {DOSE}", 0.9, CORE
    )
    flaws = flaws_of(r, [(DOSE, "Refuted"), ("Rest helps.", "Supported")], [CORE[1]])
    kinds = sorted(f.kind for f in flaws)
    assert kinds == [
        "missing_safety",
        "missing_safety",
        "negative_item",
        "unsupported_dose",
    ]  # chest pain, syncope
    cands = {c.failure_mode: c for c in offline_candidates(flaws, {CORE[1].criterion: -5})}
    dose = next(c for m, c in cands.items() if m.startswith("dose:"))
    assert dose.points == -8 and dose.criterion.endswith(DOSE) and dose.scope == []
    safety = cands["missing_safety:chest pain"]
    assert safety.points == 6 and safety.scope == ["chest pain"]
    assert cands[f"negative_item:{'recommends antibiotics'}"].points == -5


def test_near_duplicates_merge(tmp_path):
    existing = ["States the incorrect claim: Antibiotics cure the common cold."]
    cands = [Candidate("States the incorrect claim: antibiotics cure a common cold", -6, "refuted:x"),
             Candidate("Advises urgent medical care given the red flag: chest pain", 6, "missing_safety:chest pain"),
             Candidate("Advises urgent medical care given the red flag: chest pain.", 6, "missing_safety:cp")]  # fmt: skip
    kept, dups = dedup(cands, existing, threshold=0.88)
    assert [c.failure_mode for c in kept] == ["missing_safety:chest pain"] and dups[0][1] == 0
    pool = RubricPool()
    pool.add_candidates([Candidate("A", -3, "m", ["r1"]), Candidate("A again", -3, "m", ["r2"])], step=1)
    (item,) = pool.items.values()
    assert item.evidence == ["r1", "r2"]  # same failure mode: merged, not added


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [(Candidate("", -3, "m"), "empty criterion"), (Candidate("Too much", -11, "m"), "outside [-10, 10]"),
     (Candidate("Zero", 0, "m"), "outside [-10, 10] or zero"), (Candidate("Half", 2.5, "m"), "not an integer")],
)  # fmt: skip
def test_malformed_candidate_is_rejected_with_its_reason(candidate, reason):
    assert reason in validate_candidate(candidate)
    pool = RubricPool()
    pool.add_candidates([candidate], step=3)
    assert pool.items == {} and pool.history[-1]["event"] == "rejected" and reason in pool.history[-1]["why"]


def test_human_review_file(tmp_path):
    review = tmp_path / "review.jsonl"
    evo = evolution(tmp_path, top_quantile=0.0, verifier="human", review_file=str(review))
    asyncio.run(evo.step(1, rollouts(1, 4, 3)))
    (line,) = [json.loads(x) for x in review.read_text().splitlines()]
    assert line["decision"] is None and evo.pool.items["d001"].verified is False  # waits for a human
    review.write_text(json.dumps({**line, "decision": "accept"}) + "\n")
    asyncio.run(evo.step(2, rollouts(2, 4, 3)))
    asyncio.run(evo.end_epoch(1, 2))
    assert [it.id for it in evo.pool.active()] == ["d001"]
    review.write_text(json.dumps({**line, "decision": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="review.jsonl:1: field 'decision'"):
        asyncio.run(evo.step(3, rollouts(3, 4, 3)))


def test_pool_round_trips_through_mlflow(mlflow_store, tmp_path):
    import mlflow

    from m3 import registry

    evo = evolution(tmp_path, top_quantile=0.0)
    asyncio.run(evo.step(1, rollouts(1, 4, 3)))
    asyncio.run(evo.step(2, rollouts(2, 4, 3)))
    asyncio.run(evo.end_epoch(1, 2))
    registry.setup()
    with mlflow.start_run() as run:
        evo.pool.log_to_mlflow(1)
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/rubric_pool/epoch-001.json")
    again = RubricPool.from_dict(logged)
    assert again.to_dict() == evo.pool.to_dict() and [it.id for it in again.active()] == ["d001"]
    assert mlflow.get_run(run.info.run_id).data.metrics["rubric_pool/active"] == 1


def test_injected_items_count_in_eq_1(monkeypatch, tmp_path):
    """R_task over core + dynamic items (eq. 1 unchanged), from the row or from the pool file."""
    from m3.facts import reward as facts_reward
    from m3.judges.rubric import RubricVerifier

    class Judge:
        name = "fixed"

        async def grade_items(self, conversation, response, items):
            from m3.judges.base import ItemVerdict

            return [
                ItemVerdict(it.criterion.startswith(("Advises rest", "States the incorrect"))) for it in items
            ]

    monkeypatch.setattr(facts_reward, "_VERIFIER", RubricVerifier(Judge()))
    info = {"rubrics": [{"criterion": c.criterion, "points": c.points} for c in CORE], "prompt": PROMPT}
    static = asyncio.run(facts_reward.compute_score("m3_healthcare", "x", None, info, fact_aware=False))
    assert static["r_task"] == pytest.approx((5 + 5) / 10) and static["n_dynamic"] == 0  # core only
    dyn = {**info, "dynamic_rubrics": [{"criterion": f"States the incorrect claim: {WRONG}", "points": -6}],
           "rubric_pool_version": 7}  # fmt: skip
    out = asyncio.run(facts_reward.compute_score("m3_healthcare", "x", None, dyn, fact_aware=False))
    # (5 - 6 + 5 + 6) / (5 + 5 + 6): the dynamic negative item was hit
    assert (
        out["r_task"] == pytest.approx(10 / 16) and out["rubric_pool_version"] == 7 and out["n_dynamic"] == 1
    )
    # a cluster reward worker reads the pool file instead (reward_kwargs.rubric_pool)
    pool = RubricPool()
    pool.add_candidates([Candidate(f"States the incorrect claim: {WRONG}", -6, "refuted:x", ["r1"])], step=1)
    pool.observe(1, 2, {"refuted:x": ["r1", "r2"]})
    pool.end_epoch(1, 1, {})
    path = pool.save(tmp_path / "pool.json")
    out = asyncio.run(
        facts_reward.compute_score("m3_healthcare", "x", None, info, fact_aware=False, rubric_pool=str(path))
    )
    assert out["r_task"] == pytest.approx(10 / 16) and out["rubric_pool_version"] == pool.version


class KeywordJudge:
    """Grades an item met when the response has its first keyword (the judge is not under test)."""

    name = "keyword"

    async def grade_items(self, conversation, response, items):
        from m3.judges.base import ItemVerdict
        from m3.text.lexical import keywords

        said = set(keywords(response))
        return [ItemVerdict(keywords(it.criterion.split(" for ")[0])[-1] in said) for it in items]


def test_restated_core_negative_item_reaches_other_prompts_once(monkeypatch, tmp_path):
    """A core negative item that the top responses of prompt A hit is mined, admitted at the epoch's
    end, applies to prompt B on its topic (eq. 1 counts it there) and is not counted twice on A."""
    from m3.facts import reward as facts_reward
    from m3.judges.rubric import RubricVerifier

    a = [{"role": "user", "content": "I have a sore throat. Should I take antibiotics?"}]
    core = [RubricItem("Advises rest and fluids.", 5), RubricItem("Recommends antibiotics for a viral sore throat.", -5)]  # fmt: skip
    cfg = DynamicRubricConfig(dynamic=True, window=2, admit_frequency=0.3, min_support=2, top_quantile=0.0)
    evo = RubricEvolution(cfg, tmp_path / "pool.json", fact_reward=ScriptedFacts(), judge=KeywordJudge())
    said = ["Rest and drink fluids." + (" Take antibiotics." if i < 3 else "") for i in range(4)]
    rs = [Rollout(f"s1-{i}", a, text, 0.9 - 0.01 * i, core) for i, text in enumerate(said)]
    asyncio.run(evo.step(1, rs))
    asyncio.run(evo.end_epoch(1, 1))
    (item,) = evo.pool.active()  # 3 of 4 responses: admitted, though the item is one of A's core items
    assert (item.criterion, item.points) == (core[1].criterion, -5)
    assert item.scope == ["antibiotic", "sor", "throat"] and sorted(item.evidence) == ["s1-0", "s1-1", "s1-2"]
    b = "My ear hurts. Do antibiotics help an ear infection?"
    assert evo.row_items(b) and not evo.row_items("How do I ice a sprained ankle?")

    monkeypatch.setattr(facts_reward, "_VERIFIER", RubricVerifier(KeywordJudge()))

    def r_task(prompt: str, rubrics: list[RubricItem], response: str) -> dict:
        info = {"rubrics": [{"criterion": c.criterion, "points": c.points} for c in rubrics],
                "prompt": [{"role": "user", "content": prompt}], "dynamic_rubrics": evo.row_items(prompt)}  # fmt: skip
        return asyncio.run(
            facts_reward.compute_score("m3_healthcare", response, None, info, fact_aware=False)
        )

    on_b = r_task(b, core[:1], "Rest and drink fluids. Take antibiotics.")
    # eq. 1 on B: (5 - 5 + 5) / 10 with the item hit (1.0 without the pool), (5 + 5) / 10 without it
    assert on_b["n_dynamic"] == 1 and on_b["r_task"] == pytest.approx(0.5)
    assert r_task(b, core[:1], "Rest and drink fluids.")["r_task"] == pytest.approx(1.0)
    on_a = r_task(a[0]["content"], core, "Rest and drink fluids. Take antibiotics.")
    # on A the item counts once: (5 - 5 + 5) / 10, not (5 - 10 + 10) / 15
    assert on_a["n_dynamic"] == 0 and on_a["r_task"] == pytest.approx(0.5)
