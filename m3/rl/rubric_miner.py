"""Mining, verifying and deduplicating dynamic rubric items from a step's rollouts (m3.rl.rubric_pool).

    evolution = RubricEvolution(DynamicRubricConfig(dynamic=True), pool_path="out/pool.json")
    await evolution.step(step, rollouts)                 # after each RL step of the Healthcare expert
    await evolution.end_epoch(epoch, step)               # admit / retire, log the pool to MLflow
    extra_info["dynamic_rubrics"] = evolution.rows_items(prompt)   # injected into the next rows

Mining: among the step's responses, the high-scoring ones (R_task at or above the `top_quantile`) that
an independent signal flags as flawed. Signals: the Fact-Aware verifier's Refuted / Uncertain claims
(a flagged claim with a dose is an unsupported dose), the core rubric's negative items the response
hit, and a missing safety referral (the prompt states a red flag, the answer never sends the user to
urgent care). Each signal has a failure-mode signature (`refuted:<claim>`, `dose:<claim>`,
`missing_safety:<red flag>`, ...), which is what frequency and admission count.

Two miner backends, like every judge here: "offline" turns each signature into one item
deterministically (a refuted claim -> "States the incorrect claim: ..." at -6, an unsupported dose
at -8, an uncertain claim at -3, a missing referral -> "Advises urgent medical care given the red
flag: X" at +6 scoped to X, a frequently hit negative item restated at its own weight); "openai"
asks an LLM (the existing OpenAI-compatible client) to write the item from the signature and the
evidence responses. Verification: "auto" (structural checks only: the offline default, not a
substitute for review), "judge" (a strong LLM judge accepts or rejects each candidate), "human" (a
review JSONL: every new candidate is appended with "decision": null; set it to "accept" or
"reject" and the next update applies it). A candidate within `merge_threshold` MiniLM cosine of a
core item or a pool item is merged into it, not added; a restated core negative item is compared with
the pool items only (it is a core item by construction, and exists to reach the other prompts on its
topic; `m3.facts.reward` never counts it twice on a prompt that has it as a core item).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from m3.clinic.checklist import red_flags
from m3.clinic.steps import URGENT_CARE
from m3.facts.cache import normalize_claim
from m3.judges.base import RubricItem
from m3.rl.rubric_pool import Candidate, DynamicRubricConfig, RubricPool, validate_candidate
from m3.text.lexical import extract_quantities, keywords

SIGNATURE = {"refuted_claim": "refuted", "uncertain_claim": "uncertain", "unsupported_dose": "dose"}
POINTS = {"refuted_claim": -6, "unsupported_dose": -8, "uncertain_claim": -3, "missing_safety": 6}
TEMPLATES = {
    "refuted_claim": "States the incorrect claim: {detail}",
    "unsupported_dose": "States a dose that the guidelines do not support: {detail}",
    "uncertain_claim": "States an unsupported claim: {detail}",
    "missing_safety": "Advises urgent medical care given the red flag: {detail}",
}


@dataclass
class Rollout:
    """One scored response of the step: what the miner sees."""

    id: str
    prompt: list[dict]  # the conversation (chat messages)
    response: str
    r_task: float
    core: list[RubricItem] = field(default_factory=list)

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt)


@dataclass
class Flaw:
    response_id: str
    kind: str  # refuted_claim | uncertain_claim | unsupported_dose | missing_safety | negative_item
    detail: str  # the claim, the red flag, or the item's criterion
    failure_mode: str  # the signature frequencies are counted on
    topic: tuple[str, ...] = ()  # negative_item: the criterion's keywords that its prompt also has


def top_responses(rollouts: list[Rollout], quantile: float) -> list[Rollout]:
    """The high-scoring responses: R_task at or above the `quantile` of the step's R_task."""
    if not rollouts:
        return []
    cut = float(np.quantile([r.r_task for r in rollouts], quantile))
    return [r for r in rollouts if r.r_task >= cut]


def flaws_of(r: Rollout, claims: list[tuple[str, str]], negative_hits: list[RubricItem]) -> list[Flaw]:
    """A response's flaw signals from its verified claims [(claim, label)] and the core negative items
    it hit; plus a missing safety referral read off the prompt and the answer."""
    out = []
    for claim, label in claims:
        if label not in ("Refuted", "Uncertain"):
            continue
        dose = any(q.unit in ("mg", "mcg", "g", "ml", "iu", "unit") for q in extract_quantities(claim))
        kind = "unsupported_dose" if dose else ("refuted_claim" if label == "Refuted" else "uncertain_claim")
        out.append(Flaw(r.id, kind, claim, f"{SIGNATURE[kind]}:{normalize_claim(claim)}"))
    prompt_words = set(keywords(r.prompt_text))
    for item in negative_hits:
        topic = tuple(k for k in keywords(item.criterion) if k in prompt_words)[:3]
        mode = f"negative_item:{normalize_claim(item.criterion)}"
        out.append(Flaw(r.id, "negative_item", item.criterion, mode, topic))
    if not URGENT_CARE.search(r.response):
        for flag in red_flags(r.prompt_text):
            out.append(Flaw(r.id, "missing_safety", flag, f"missing_safety:{flag}"))
    return out


def offline_candidates(flaws: list[Flaw], core_points: dict[str, float] | None = None) -> list[Candidate]:
    """One deterministic candidate per failure mode, with every response that showed it as evidence."""
    by_mode: dict[str, list[Flaw]] = {}
    for f in flaws:
        by_mode.setdefault(f.failure_mode, []).append(f)
    out = []
    for mode, fs in sorted(by_mode.items()):
        first = fs[0]
        evidence = sorted({f.response_id for f in fs})
        if first.kind == "negative_item":
            # a core negative item hit by top responses: restated for every prompt on its topic (the
            # criterion's words its prompt shares, as keyword stems; none shared: every prompt)
            points = int(round((core_points or {}).get(first.detail, -5)))
            out.append(Candidate(first.detail, max(points, -10), mode, evidence, list(first.topic)))
            continue
        scope = [first.detail] if first.kind == "missing_safety" else []
        out.append(
            Candidate(
                TEMPLATES[first.kind].format(detail=first.detail), POINTS[first.kind], mode, evidence, scope
            )
        )
    return out


MINER_PROMPT = """You maintain the grading rubric of a medical assistant trained with reinforcement learning.
High-scoring answers showed this failure mode: {mode}
Evidence (answers that showed it):
{evidence}

Write ONE rubric item that a grader can check on any answer to catch this failure. Use a negative
integer weight (-10..-1) for something the answer must not do, a positive one (1..10) for something it
must do. Answer with JSON only: {{"criterion": "...", "points": <int>, "scope": [<prompt keywords it applies to, or empty>]}}"""

VERIFIER_PROMPT = """You review proposed rubric items for grading a medical assistant's answers.
Item: [{points}] {criterion}
Failure mode it targets: {mode}
Accept it only if it is medically correct, specific, checkable from the answer alone, and not
already implied by generic helpfulness. Answer with JSON only: {{"accept": true or false, "reason": "..."}}"""


async def llm_candidates(client, flaws: list[Flaw], responses: dict[str, str]) -> list[Candidate]:
    """The "openai" miner: one item per failure mode written by an LLM from the evidence."""
    out = []
    for c in offline_candidates(flaws):
        evidence = "\n".join(f"- {responses[i][:400]}" for i in c.evidence[:3])
        res = await client.chat_json(
            [{"role": "user", "content": MINER_PROMPT.format(mode=c.failure_mode, evidence=evidence)}]
        )
        if res.ok and res.data is not None:
            d = res.data
            points = d.get("points")
            out.append(Candidate(str(d.get("criterion", "")), points if isinstance(points, int) else 0,
                                 c.failure_mode, c.evidence, list(d.get("scope") or []), "openai"))  # fmt: skip
    return out


async def judge_verdicts(client, candidates: list[Candidate]) -> list[bool | None]:
    """The "judge" verifier: a strong LLM accepts or rejects each candidate (None if it failed to answer)."""
    out: list[bool | None] = []
    for c in candidates:
        res = await client.chat_json(
            [
                {
                    "role": "user",
                    "content": VERIFIER_PROMPT.format(
                        points=c.points, criterion=c.criterion, mode=c.failure_mode
                    ),
                }
            ]
        )
        accept = (res.data or {}).get("accept") if res.ok else None
        out.append(accept if isinstance(accept, bool) else None)
    return out


def human_verdicts(
    path: str | Path, candidates: list[Candidate]
) -> tuple[list[bool | None], dict[str, bool]]:
    """The "human" verifier: new candidates are appended to the review JSONL with "decision": null;
    returns (None for each new one, {failure mode: decision} of the lines a reviewer has decided)."""
    path = Path(path)
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    decided = {}
    for lineno, row in enumerate(lines, 1):
        d = row.get("decision")
        if d not in (None, "accept", "reject"):
            raise ValueError(
                f'{path}:{lineno}: field \'decision\' is {d!r}; write "accept", "reject" or null'
            )
        if d is not None:
            decided[row["failure_mode"]] = d == "accept"
    known = {row["failure_mode"] for row in lines}
    new = [c for c in candidates if c.failure_mode not in known]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for c in new:
                f.write(json.dumps({"criterion": c.criterion, "points": c.points, "failure_mode": c.failure_mode,
                                    "scope": c.scope, "evidence": c.evidence, "decision": None}) + "\n")  # fmt: skip
    return [decided.get(c.failure_mode) for c in candidates], decided


def dedup(
    candidates: list[Candidate], existing: list[str], threshold: float
) -> tuple[list[Candidate], list[tuple[Candidate, int]]]:
    """(new candidates, [(duplicate, index into `existing`)]): a candidate within `threshold` cosine of an
    existing criterion (a core item or a pool item) or of an earlier candidate is a duplicate."""
    if not candidates:
        return [], []
    from m3.text.embeddings import embed

    texts = [c.criterion for c in candidates]
    vecs = embed(existing + texts)
    ex, cand = vecs[: len(existing)], vecs[len(existing) :]
    kept: list[int] = []
    dups = []
    for i, c in enumerate(candidates):
        sims = ex @ cand[i] if len(existing) else np.zeros(0)
        if sims.size and float(sims.max()) >= threshold:
            dups.append((c, int(sims.argmax())))
        elif not any(float(cand[j] @ cand[i]) >= threshold for j in kept):  # nor a copy of this step's
            kept.append(i)
    return [candidates[i] for i in kept], dups


class RubricEvolution:
    """The pool plus the machinery that feeds it, for one training run (module docstring)."""

    def __init__(
        self, cfg: DynamicRubricConfig, pool_path: str | Path, fact_reward=None, judge=None, llm=None
    ):
        self.cfg, self.path = cfg, Path(pool_path)
        self.pool = RubricPool.load(self.path) if self.path.is_file() else RubricPool(cfg)
        self._facts, self._judge, self._llm = fact_reward, judge, llm
        self.epoch_rollouts: list[Rollout] = []

    def _fact_reward(self):
        if self._facts is None:
            from m3.facts.reward import _shared

            self._facts = _shared()
        return self._facts

    def _rubric_judge(self):
        if self._judge is None:
            from m3.facts.reward import _rubric_verifier

            self._judge = _rubric_verifier().judge
        return self._judge

    async def flaws(self, rollouts: list[Rollout]) -> list[Flaw]:
        out = []
        for r in top_responses(rollouts, self.cfg.top_quantile):
            question = r.prompt[-1]["content"] if r.prompt else None
            fact = await self._fact_reward().score(r.response, r.r_task, question)
            claims = [(fact.claims[i], fact.verdicts[i].label) for i in fact.representatives]
            negative = [it for it in r.core if it.points < 0]
            hits = []
            if negative:
                verdicts = await self._rubric_judge().grade_items(r.prompt, r.response, negative)
                hits = [it for it, v in zip(negative, verdicts, strict=True) if v.criteria_met]
            out += flaws_of(r, claims, hits)
        return out

    async def step(self, step: int, rollouts: list[Rollout]) -> list[Flaw]:
        """Mine the step's rollouts, verify and dedup the candidates, record the frequencies."""
        flaws = await self.flaws(rollouts)
        self.epoch_rollouts += rollouts
        modes: dict[str, list[str]] = {}
        for f in flaws:
            modes.setdefault(f.failure_mode, []).append(f.response_id)
        self.pool.observe(step, len(rollouts), modes)
        fresh = [f for f in flaws if self.pool.by_failure_mode(f.failure_mode) is None]
        core_points = {it.criterion: it.points for r in rollouts for it in r.core}
        if self.cfg.miner == "offline":
            candidates = offline_candidates(fresh, core_points)
        else:
            candidates = await llm_candidates(self._llm, fresh, {r.id: r.response for r in rollouts})
        for f in flaws:  # evidence of known failure modes
            known = self.pool.by_failure_mode(f.failure_mode)
            if known is not None and f.response_id not in known.evidence:
                known.evidence.append(f.response_id)
        core = sorted({it.criterion for r in rollouts for it in r.core})
        pool_items = list(self.pool.items.values())
        valid = [c for c in candidates if validate_candidate(c) is None]
        # A restated core negative item IS a core criterion: it exists to reach the other prompts on its
        # topic, so only a pool item can duplicate it (its own prompt never counts it twice: facts.reward
        # drops a dynamic item equal to a row's core item). Every other candidate that a core item
        # already covers needs no item.
        restated = [c for c in valid if c.failure_mode.startswith("negative_item:")]
        kept_r, dups_r = dedup(restated, [it.criterion for it in pool_items], self.cfg.merge_threshold)
        others = [c for c in valid if not c.failure_mode.startswith("negative_item:")]
        kept_o, dups_o = dedup(others, core + [it.criterion for it in pool_items], self.cfg.merge_threshold)
        merged = dups_r + [(c, j - len(core)) for c, j in dups_o if j >= len(core)]
        for c, j in merged:  # merged into the pool item it duplicates
            pool_items[j].evidence = sorted(set(pool_items[j].evidence) | set(c.evidence))
        candidates = kept_r + kept_o
        self.pool.add_candidates(candidates, step, await self._verdicts(candidates, step))
        self.pool.save(self.path)
        return flaws

    async def _verdicts(self, candidates: list[Candidate], step: int) -> list[bool | None]:
        if self.cfg.verifier == "auto":
            return [True] * len(candidates)
        if self.cfg.verifier == "judge":
            return await judge_verdicts(self._llm, candidates)
        verdicts, decided = human_verdicts(self.cfg.review_file, candidates)
        for item in list(self.pool.items.values()):
            if item.status == "candidate" and item.failure_mode in decided:
                self.pool.decide(item.id, decided[item.failure_mode], step, "human review")
        return verdicts

    async def end_epoch(self, epoch: int, step: int) -> dict[str, tuple[int, int]]:
        """Grade the active items on the epoch's responses they apply to, then admit / retire."""
        satisfaction: dict[str, tuple[int, int]] = {}
        for item in self.pool.active():
            rs = [r for r in self.epoch_rollouts if item.applies_to(r.prompt_text)]
            held = 0
            for r in rs:
                (v,) = await self._rubric_judge().grade_items(r.prompt, r.response, [item.rubric_item()])
                held += int(bool(v.criteria_met) == (item.points > 0))
            satisfaction[item.id] = (held, len(rs))
        self.pool.end_epoch(epoch, step, satisfaction)
        self.pool.save(self.path)
        self.epoch_rollouts = []
        return satisfaction

    def row_items(self, prompt_text: str) -> list[dict]:
        """The active items of a prompt in the row format of extra_info["dynamic_rubrics"]."""
        return [{"criterion": it.criterion, "points": float(it.points), "tags": ["dynamic", it.id]}
                for it in self.pool.items_for(prompt_text)]  # fmt: skip
