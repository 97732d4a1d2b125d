"""HealthBench-Hallu: claims extracted from a model's answers to HealthBench prompts, each verified
against evidence WITHOUT the claim cache, and the hallucination rate

    H = (1.0 * #refuted + 0.5 * #uncertain) / #claims        (docs/formulas.md; M3 3.5%, GPT-5.2-High 3.8%)

    python -m eval.hallu                                        # m3-base, 30 sample prompts, offline
    python -m eval.hallu model=models:/m3-mopd@candidate data=main n_examples=1000 facts.backend=openai \
        facts.model=... facts.base_url=...

The paper verifies with live search; here the evidence is the open-medicine guideline corpus or a
user passage file (`facts.passages_path`), with the search-agent hook for web search in code. H is
micro-averaged over all claims (the paper's definition); the per-response mean is reported too.
Outputs (resumable, one line per answered prompt): completions.jsonl, claims.jsonl (every claim with
label, evidence ids, evidence text and rationale), metrics.json, summary.json; logged to MLflow.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from eval.common import evaluated_model, read_jsonl_resumable, record_run, repo_path, run_dir
from eval.healthbench.run import GenerationConfig, generate_missing
from m3 import registry
from m3.config import TrackingConfig, register_schema
from m3.data.healthbench import load_examples, subsample
from m3.facts.reward import FactAwareReward, FactRewardConfig
from m3.facts.reward_math import hallucination_rate


@dataclass
class HalluRunConfig:
    model: str | None = "models:/m3-base@candidate"
    endpoint: str | None = None
    endpoint_model: str = "default"
    endpoint_api_key_env: str = "OPENAI_API_KEY"
    data: str = "data/healthbench_sample30.jsonl"
    n_examples: int | None = None
    seed: int = 0
    out_dir: str | None = None
    summary_out: str | None = None
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    facts: FactRewardConfig = field(default_factory=FactRewardConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.model and not self.endpoint:
            raise ValueError("set `model=models:/...` (or a directory) or `endpoint=http://.../v1`")


register_schema("hallu_schema", HalluRunConfig)


def aggregate(rows: list[dict]) -> dict[str, float]:
    labels = [c["label"] for r in rows for c in r["claims"]]
    per_response = [hallucination_rate([c["label"] for c in r["claims"]]) for r in rows if r["claims"]]
    n = len(labels) or 1
    return {
        "hallucination_rate": hallucination_rate(labels),
        "hallucination_rate_per_response": sum(per_response) / len(per_response) if per_response else 0.0,
        "refuted_rate": labels.count("Refuted") / n,
        "uncertain_rate": labels.count("Uncertain") / n,
        "supported_rate": labels.count("Supported") / n,
        "mean_r_fact": sum(r.get("r_fact", 0.0) for r in rows) / len(rows) if rows else 0.0,
        "n_claims": len(labels),
        "n_responses": len(rows),
        "n_responses_without_claims": sum(1 for r in rows if not r["claims"]),
    }


async def verify_missing(cfg: HalluRunConfig, examples, completions: dict[str, str], path: Path) -> None:
    done = {r["prompt_id"] for r in read_jsonl_resumable(path)}
    todo = [e for e in examples if e.prompt_id not in done]
    if not todo:
        return
    checker = FactAwareReward(cfg.facts)
    for ex in tqdm(todo, desc="hallu", unit="answer"):
        question = ex.prompt[-1]["content"] if ex.prompt else None
        claims = await checker.claims_of(completions[ex.prompt_id], question)
        verdicts = await checker.verify(claims, use_cache=False)  # the benchmark never reuses verdicts
        # the Fact-Aware reward's R_fact on the same verdicts (denoised: clusters, saliency weights)
        r_fact = checker.combine(completions[ex.prompt_id], 1.0, claims, verdicts).r_fact
        row = {"prompt_id": ex.prompt_id, "r_fact": r_fact, "claims": []}
        for claim, v in zip(claims, verdicts, strict=True):
            evidence = [
                {"id": i, "text": p.text} for i in v.evidence_ids if (p := checker.corpus.get(i)) is not None
            ]
            row["claims"].append({"claim": claim, **asdict(v), "evidence": evidence})
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(cfg: HalluRunConfig) -> dict:
    registry.setup(cfg.tracking.experiment)
    model_ref, pinned = evaluated_model(cfg)
    examples = subsample(load_examples(repo_path(cfg.data)), cfg.n_examples, cfg.seed)
    out = run_dir(cfg, "hallu", cfg.data, model_ref)
    completions = generate_missing(cfg, examples, out / "completions.jsonl")
    asyncio.run(verify_missing(cfg, examples, completions, out / "claims.jsonl"))
    wanted = {e.prompt_id for e in examples}
    rows = [
        r
        for r in map(json.loads, (out / "claims.jsonl").read_text().splitlines())
        if r["prompt_id"] in wanted
    ]
    metrics = aggregate(rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    backend = f"facts:{cfg.facts.backend}" + (f":{cfg.facts.model}" if cfg.facts.backend == "openai" else "")
    summary = {
        "step": "hallu",
        "metric": "hallucination_rate",
        "value": round(metrics["hallucination_rate"], 4),
        "n_claims": metrics["n_claims"],
        "backend": backend,
        "model": model_ref,
        "out_dir": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    record_run(
        cfg,
        kind="hallu",
        run_name=f"hallu-{Path(cfg.data).stem}",
        model_ref=model_ref,
        pinned=pinned,
        tags={"m3.judge": backend},
        metrics=metrics,
        artifacts=[out / n for n in ("metrics.json", "claims.jsonl", "summary.json")],
        link={"hallucination_rate": summary["value"], "backend": backend},
        summary=summary,
    )
    print(
        f"HealthBench-Hallu {cfg.data}: H = {summary['value']} over {metrics['n_claims']} claims "
        f"({backend}) -> {out}"
    )
    return summary
