"""The Fact-Aware reward end to end: claims -> cached verification -> denoised R_fact -> gated R.

    reward = FactAwareReward(FactRewardConfig())                  # offline: no network, no GPU
    s = await reward.score(response, r_task=0.9, question=prompt)
    s.reward, s.r_fact, s.gate, s.claims, s.labels

The math lives in `m3.facts.reward_math` (pure functions, docs/formulas.md equations). This module wires the
parts: claim extraction (`m3.facts.claims`), evidence retrieval over the open-medicine guideline
corpus or user passages (`m3.facts.corpus`, `m3.facts.retrieval`, plus an optional search hook),
verification (`m3.facts.verify`) behind the two-level cache (`m3.facts.cache`), and MiniLM
embeddings of claims and response sentences for clustering and saliency.

`compute_score` is the verl reward entry point of the Healthcare expert: R_task from the rubric
verifier (eq. 1) over the row's HealthBench-format rubric, plus the gated R_fact. Each reward worker
builds one `FactAwareReward` (process-wide) from `$M3_FACT_REWARD_CONFIG` (a YAML of
FactRewardConfig fields) or the defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from m3.facts.cache import CacheConfig, CachedVerifier, TwoLevelCache
from m3.facts.reward_math import FLAGGED_LABELS, cluster_claims, dynamic_gate, fact_reward, saliency_weights
from m3.facts.types import Verdict


@dataclass
class FactRewardConfig:
    backend: str = "offline"  # offline | openai (claim extractor and verifier)
    model: str = "gpt-4.1"  # openai backend: served model name
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    llm_cache_path: str | None = "mlruns/fact_llm_cache.sqlite"
    guideline_ids: list[str] | None = None  # None: all open-medicine guidelines
    passages_path: str | None = None  # user JSONL of passages, instead of the guidelines
    top_k: int = 5
    cluster_threshold: float = 0.9  # OPEN in the paper: claims this similar count once
    tau_min: float = 0.75
    tau_max: float = 0.95
    kappa: float = 10.0
    eps: float = 1e-8
    cache: CacheConfig = field(default_factory=CacheConfig)

    def __post_init__(self) -> None:
        if self.backend not in ("offline", "openai"):
            raise ValueError(f"facts backend must be 'offline' or 'openai', got {self.backend!r}")


@dataclass
class FactScore:
    reward: float  # R = R_task + lambda(R_task) R_fact
    r_task: float
    r_fact: float
    gate: float
    claims: list[str]
    verdicts: list[Verdict]
    representatives: list[int]
    weights: list[float]

    @property
    def labels(self) -> list[str]:
        return [v.label for v in self.verdicts]


class FactAwareReward:
    def __init__(self, cfg: FactRewardConfig, search_hook: Callable | None = None):
        from m3.facts.corpus import Corpus, load_guideline_corpus, load_passages_jsonl
        from m3.facts.retrieval import CallableRetriever, HybridRetriever, MergedRetriever

        self.cfg = cfg
        corpus = (
            Corpus(load_passages_jsonl(cfg.passages_path))
            if cfg.passages_path
            else load_guideline_corpus(cfg.guideline_ids)
        )
        self.corpus = corpus
        retriever = HybridRetriever(corpus)
        if search_hook is not None:  # e.g. a web-search agent: claim -> passages
            retriever = MergedRetriever([retriever, CallableRetriever(search_hook)])
        if cfg.backend == "offline":
            from m3.facts.verify import OfflineVerifier

            verifier = OfflineVerifier(retriever)
            self.extractor = None
        else:
            from m3.facts.claims import OpenAIClaimExtractor
            from m3.facts.verify import OpenAIVerifier
            from m3.llm import LLMConfig

            llm = LLMConfig(
                model=cfg.model,
                api_key_env=cfg.api_key_env,
                cache_path=cfg.llm_cache_path,
                **({"base_url": cfg.base_url} if cfg.base_url else {}),
            )
            verifier = OpenAIVerifier(retriever, llm, k=cfg.top_k)
            self.extractor = OpenAIClaimExtractor(llm)
        self.cache = TwoLevelCache.from_config(cfg.cache)
        self.verifier = CachedVerifier(verifier, self.cache)

    async def claims_of(self, response: str, question: str | None = None) -> list[str]:
        if self.extractor is not None:
            return [c.text for c in await self.extractor.extract(response, question)]
        from m3.facts.claims import extract_claims

        return [c.text for c in extract_claims(response, question=question)]

    async def verify(self, claims: list[str], *, use_cache: bool = True) -> list[Verdict]:
        return await self.verifier.verify(claims, use_cache=use_cache)

    async def score(self, response: str, r_task: float, question: str | None = None) -> FactScore:
        claims = await self.claims_of(response, question)
        verdicts = await self.verify(claims) if claims else []
        return self.combine(response, r_task, claims, verdicts)

    def combine(self, response: str, r_task: float, claims: list[str], verdicts: list[Verdict]) -> FactScore:
        """R_fact over already verified claims (clusters, saliency weights), then the gated R."""
        from m3.text.embeddings import embed
        from m3.text.lexical import split_sentences

        gate = dynamic_gate(r_task, self.cfg.tau_min, self.cfg.tau_max, self.cfg.kappa)
        if not claims:
            return FactScore(r_task, r_task, 0.0, gate, [], [], [], [])
        sentences = split_sentences(response) or [response]
        vecs = embed(claims + sentences)
        claim_vecs, sent_vecs = vecs[: len(claims)], vecs[len(claims) :]
        reps, _ = cluster_claims(claim_vecs, self.cfg.cluster_threshold)
        weights = saliency_weights(claim_vecs[reps], sent_vecs)
        flagged = [verdicts[i].label in FLAGGED_LABELS for i in reps]
        r_fact = fact_reward(weights.tolist(), flagged, self.cfg.eps)
        return FactScore(
            r_task + gate * r_fact, r_task, r_fact, gate, claims, verdicts, reps, weights.tolist()
        )


# --- verl entry point --------------------------------------------------------------------------
_REWARD: FactAwareReward | None = None
_VERIFIER = None


def _shared() -> FactAwareReward:
    """One FactAwareReward per reward worker process (corpus, indexes and cache built once)."""
    global _REWARD
    if _REWARD is None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.structured(FactRewardConfig)
        path = os.environ.get("M3_FACT_REWARD_CONFIG")
        if path:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))  # unknown keys fail here
        _REWARD = FactAwareReward(OmegaConf.to_object(cfg))
    return _REWARD


def _rubric_verifier():
    global _VERIFIER
    if _VERIFIER is None:
        from m3.judges.config import JudgeConfig, build_rubric_judge
        from m3.judges.rubric import RubricVerifier

        backend = os.environ.get("M3_JUDGE_BACKEND", "offline")
        _VERIFIER = RubricVerifier(
            build_rubric_judge(
                JudgeConfig(
                    backend=backend,
                    model=os.environ.get("M3_JUDGE_MODEL", "gpt-4.1"),
                    base_url=os.environ.get("M3_JUDGE_BASE_URL"),
                )
            )
        )
    return _VERIFIER


async def compute_score(
    data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None, **kwargs
) -> dict:
    """verl reward function (async): R = R_task + lambda(R_task) R_fact for one rollout.

    `extra_info` must hold `rubrics` (HealthBench format: criterion, points, tags) and `prompt`
    (the conversation as chat messages). Dynamic rubric items (m3.rl.rubric_pool) join the core
    ones in R_task (eq. 1 unchanged): from `extra_info["dynamic_rubrics"]` (the local trainer writes
    them into each row) or, on a cluster, from the pool file `kwargs["rubric_pool"]`
    (`reward.custom_reward_function.reward_kwargs.rubric_pool`). `kwargs["fact_aware"]=False` drops
    R_fact (the rubric-only ablation). Returns {"score", "r_task", "r_fact", "gate", "n_claims",
    "flagged_fraction", "n_dynamic", "rubric_pool_version"}; the extra keys are logged by verl.
    """
    from m3.judges.base import RubricItem

    info = extra_info or {}
    if "rubrics" not in info or "prompt" not in info:
        raise ValueError(f"{data_source}: extra_info needs 'rubrics' and 'prompt' for the healthcare reward")
    items = [
        RubricItem(r["criterion"], float(r["points"]), tuple(r.get("tags", ()))) for r in info["rubrics"]
    ]
    conversation = list(info["prompt"])
    dynamic, version = _dynamic_items(info, conversation, kwargs.get("rubric_pool"))
    core = {it.criterion for it in items}  # a restated core item counts once on its own prompt
    dynamic = [it for it in dynamic if it.criterion not in core]
    task = await _rubric_verifier().score(conversation, solution_str, items + dynamic)
    extras = {"n_dynamic": len(dynamic), "rubric_pool_version": version}
    if not kwargs.get("fact_aware", True):  # the rubric-only arm: R = R_task
        return {"score": task.reward, "r_task": task.reward, "r_fact": 0.0, "gate": 0.0, "n_claims": 0,
                "flagged_fraction": 0.0, **extras}  # fmt: skip
    question = conversation[-1]["content"] if conversation else None
    fact = await _shared().score(solution_str, task.reward, question)
    n = len(fact.representatives)
    return {
        "score": fact.reward,
        "r_task": task.reward,
        "r_fact": fact.r_fact,
        "gate": fact.gate,
        "n_claims": len(fact.claims),
        "flagged_fraction": (
            sum(fact.verdicts[i].label in FLAGGED_LABELS for i in fact.representatives) / n if n else 0.0
        ),
        **extras,
    }


def _dynamic_items(info: dict, conversation: list[dict], pool_path: str | None):
    """(dynamic rubric items of this row, the pool version they come from; -1 without a pool)."""
    from m3.judges.base import RubricItem

    rows = info.get("dynamic_rubrics")
    if rows is not None:
        items = [RubricItem(r["criterion"], float(r["points"]), tuple(r.get("tags", ()))) for r in rows]
        return items, int(info.get("rubric_pool_version", -1))
    if pool_path:
        from m3.rl.rubric_pool import items_from_pool_file

        return items_from_pool_file(pool_path, "\n".join(m["content"] for m in conversation))
    return [], -1
