"""HealthBench run: generate completions, grade every rubric item, score as simple-evals, log.

    python -m eval.healthbench run                                    # m3-base, 30 sample records, offline judge
    python -m eval.healthbench run model=models:/m3-mopd@candidate data=hard judge.backend=openai \
        judge.model=gpt-4.1 judge.base_url=https://... n_examples=null
    python -m eval.healthbench run endpoint=http://127.0.0.1:8000/v1 endpoint_model=m3   # a served model

Resumable: completions and graded examples are appended to `<out_dir>/completions.jsonl` and
`<out_dir>/graded.jsonl` as they finish (one flushed line each). Re-running the same command skips
what is there, so a killed run loses at most the examples in flight, and nothing is graded twice
(the judge cache also makes repeated judge calls free). An example whose judge call failed after
all retries is not written; it is listed in the summary and retried on the next run.
Outputs: graded.jsonl (the input format of `python -m eval.healthbench score`), metrics.json
(simple-evals' keys), scores.png (per-axis and per-theme bars), summary.json; all logged to MLflow
with the judge backend and a link to the evaluated model version.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from eval.common import evaluated_model, read_jsonl_resumable, record_run, repo_path, run_dir
from eval.healthbench.scoring import N_BOOTSTRAP, score_graded
from m3 import registry
from m3.config import TrackingConfig, register_schema
from m3.data.healthbench import HealthBenchExample, graded_record, load_examples, load_graded, subsample
from m3.judges.config import (
    JudgeConfig,
    build_rubric_judge,
    grader_template_name,
    judge_backend_name,
    simple_evals_judge,
)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # greedy: repeatable evaluations
    enable_thinking: bool = False
    batch_size: int = 8


@dataclass
class HealthBenchRunConfig:
    model: str | None = "models:/m3-base@candidate"  # registry URI or local directory
    endpoint: str | None = None  # OpenAI-compatible base URL; replaces `model` for generation
    endpoint_model: str = "default"
    endpoint_api_key_env: str = "OPENAI_API_KEY"
    data: str = "data/healthbench_sample30.jsonl"  # path, URL, or main | hard | consensus
    n_examples: int | None = None  # None: every example; else a seeded subsample (as simple-evals)
    seed: int = 0
    n_bootstrap: int = N_BOOTSTRAP
    concurrent_examples: int = 8  # examples graded at once; items of each go out together
    out_dir: str | None = None  # None: outputs/healthbench/<model>-<data>-<config hash>
    summary_out: str | None = None  # also write the summary here (the demo's table reads it)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=simple_evals_judge)  # simple-evals' grader template
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.model and not self.endpoint:
            raise ValueError("set `model=models:/...` (or a directory) or `endpoint=http://.../v1`")


register_schema("healthbench_schema", HealthBenchRunConfig)


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


# --- generation ------------------------------------------------------------------------------
def _prompt_chars(ex: HealthBenchExample) -> int:
    return sum(len(m["content"]) for m in ex.prompt)


def generate_missing(
    cfg: HealthBenchRunConfig, examples: list[HealthBenchExample], path: Path
) -> dict[str, str]:
    done = {r["prompt_id"]: r["completion"] for r in read_jsonl_resumable(path)}
    # shortest conversations first: a local batch then pads to similar lengths (the sample's prompts
    # run from 12 to 4,266 characters); completions are keyed by prompt_id, scoring keeps data order
    todo = sorted((e for e in examples if e.prompt_id not in done), key=_prompt_chars)
    if not todo:
        return done
    g = cfg.generation
    bar = tqdm(total=len(todo), desc="generate", unit="ex")
    if cfg.endpoint:
        from m3.model.generate import EndpointChat

        async def run() -> None:
            chat = EndpointChat(
                cfg.endpoint,
                cfg.endpoint_model,
                api_key_env=cfg.endpoint_api_key_env,
                max_new_tokens=g.max_new_tokens,
                temperature=g.temperature,
                enable_thinking=g.enable_thinking,
            )

            async def one(ex: HealthBenchExample) -> None:
                ans = await chat(ex.prompt)
                _append(path, {"prompt_id": ex.prompt_id, "completion": ans.text, "reasoning": ans.reasoning})
                done[ex.prompt_id] = ans.text
                bar.update()

            try:
                await asyncio.gather(*(one(e) for e in todo))
            finally:
                await chat.aclose()

        asyncio.run(run())
    else:
        from m3.model.generate import HFChatGenerator

        gen = HFChatGenerator(
            registry.resolve(cfg.model or ""),
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            enable_thinking=g.enable_thinking,
            batch_size=g.batch_size,
            seed=cfg.seed,
        )
        for start in range(0, len(todo), g.batch_size):
            chunk = todo[start : start + g.batch_size]
            for ex, ans in zip(chunk, gen.chat([e.prompt for e in chunk]), strict=True):
                _append(
                    path,
                    {
                        "prompt_id": ex.prompt_id,
                        "completion": ans.text,
                        "reasoning": ans.reasoning,
                        "completion_tokens": ans.completion_tokens,
                    },
                )
                done[ex.prompt_id] = ans.text
            bar.update(len(chunk))
    bar.close()
    return done


# --- grading ---------------------------------------------------------------------------------
async def grade_missing(
    cfg: HealthBenchRunConfig, examples: list[HealthBenchExample], completions: dict[str, str], path: Path
) -> list[dict]:
    """Grade every example not yet in `path`; returns the failures (prompt_id, item, error)."""
    done = {r["prompt_id"] for r in read_jsonl_resumable(path)}
    todo = [e for e in examples if e.prompt_id not in done]
    failures: list[dict] = []
    if not todo:
        return failures
    judge = build_rubric_judge(cfg.judge)
    gate = asyncio.Semaphore(cfg.concurrent_examples)
    bar = tqdm(total=len(todo), desc=f"grade ({judge.name})", unit="ex")

    async def one(ex: HealthBenchExample) -> None:
        async with gate:
            verdicts = await judge.grade_items(ex.prompt, completions[ex.prompt_id], ex.rubrics)
        failed = [(it, v) for it, v in zip(ex.rubrics, verdicts, strict=True) if v.criteria_met is None]
        if failed:
            failures.extend(
                {"prompt_id": ex.prompt_id, "criterion": it.criterion[:120], "error": v.error}
                for it, v in failed
            )
        else:  # written only when complete: a partly graded example is regraded next run
            _append(path, graded_record(ex, completions[ex.prompt_id], verdicts))
        bar.update()

    try:
        await asyncio.gather(*(one(e) for e in todo))
    finally:
        bar.close()
        await judge.aclose()
    return failures


# --- report ----------------------------------------------------------------------------------
def plot_scores(metrics: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("axis:", "per axis"), ("theme:", "per theme")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, (prefix, title) in zip(axes, groups, strict=True):
        keys = sorted(k for k in metrics if k.startswith(prefix) and k.count(":") == 1)
        vals = [metrics[k] for k in keys]
        errs = [metrics.get(k + ":bootstrap_std", 0.0) for k in keys]
        ax.barh([k[len(prefix) :] for k in keys], vals, xerr=errs, color="#4C72B0")
        for y, v in enumerate(vals):
            ax.text(min(v, 0.85) + 0.02, y, f"{v:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(f"HealthBench {title} (overall {metrics.get('overall_score', 0):.3f})")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(cfg: HealthBenchRunConfig) -> dict:
    registry.setup(cfg.tracking.experiment)
    model_ref, pinned = evaluated_model(cfg)
    out = run_dir(cfg, "healthbench", cfg.data, model_ref)
    examples = subsample(load_examples(repo_path(cfg.data)), cfg.n_examples, cfg.seed)
    completions_path, graded_path = out / "completions.jsonl", out / "graded.jsonl"

    completions = generate_missing(cfg, examples, completions_path)
    failures = asyncio.run(grade_missing(cfg, examples, completions, graded_path))
    # score in the examples' order, not the order grading finished: same inputs, same bootstrap
    order = {e.prompt_id: i for i, e in enumerate(examples)}
    graded_all = load_graded(graded_path) if graded_path.is_file() else []
    graded = sorted(
        (g for g in graded_all if g.example.prompt_id in order), key=lambda g: order[g.example.prompt_id]
    )
    failures_path = out / "failures.jsonl"
    failures_path.unlink(missing_ok=True)  # stale from an earlier run
    if failures:
        failures_path.write_text("".join(json.dumps(f) + "\n" for f in failures))
    if not graded:
        raise RuntimeError(
            f"no example could be graded ({len(failures)} failed items, first: {failures[0]['error']}); "
            f"see {failures_path}, fix the judge endpoint and re-run the same command"
        )
    metrics = score_graded(graded, n_resamples=cfg.n_bootstrap, seed=cfg.seed)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_scores(metrics, out / "scores.png")
    judge_name = judge_backend_name(cfg.judge)
    template = grader_template_name(cfg.judge)
    summary = {
        "step": "healthbench",
        "metric": "overall_score",
        "value": round(metrics["overall_score"], 4),
        "bootstrap_std": round(metrics["overall_score:bootstrap_std"], 4),
        "n_graded": len(graded),
        "n_examples": len(examples),
        "n_failed_examples": len({f["prompt_id"] for f in failures}),
        "backend": f"{judge_name}, grader template: {template}",
        "grader_template": template,
        "model": model_ref,
        "data": cfg.data,
        "out_dir": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logged = {_metric_key(k): float(v) for k, v in metrics.items() if ":" not in k or k.count(":") == 1}
    logged.update(n_graded=len(graded), n_failed_examples=summary["n_failed_examples"])
    record_run(
        cfg,
        kind="healthbench",
        run_name=f"healthbench-{Path(cfg.data).stem}",
        model_ref=model_ref,
        pinned=pinned,
        tags={"m3.judge": judge_name, "m3.grader_template": template},
        metrics=logged,
        artifacts=[out / n for n in ("metrics.json", "graded.jsonl", "scores.png", "summary.json")],
        link={"overall_score": summary["value"], "judge": judge_name, "data": cfg.data},
        summary=summary,
    )
    print(
        f"HealthBench {cfg.data}: overall_score {summary['value']} +- {summary['bootstrap_std']} "
        f"({len(graded)}/{len(examples)} graded, judge {judge_name}, grader template {template}) -> {out}"
    )
    if failures:
        print(
            f"{summary['n_failed_examples']} examples had judge failures; re-run the same command to retry them"
        )
    return summary


def _metric_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)
