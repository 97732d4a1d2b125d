"""Stage 1: train one domain expert with RL and register it as `m3-expert-<expert>`.

    make stage1 EXPERT=inquiry                        # local: tiny model, CPU, a few SPAR steps
    make stage1 EXPERT=healthcare ARGS="steps=5"
    make stage1 EXPERT=inquiry ARGS="model=smollm2_135m"   # the real preset (reads/writes @real)
    DRY_RUN=1 make stage1 EXPERT=inquiry SCALE=cluster ARGS="model=qwen3_235b_a22b scale.backend=megatron"

Local (scale=local): config -> the base model from the registry -> rows from the expert's data ->
a plain loop of `LocalEngine.rollout` / `LocalEngine.update` (the same agent loop, rewards,
estimator and verl policy loss as the cluster job) -> metrics per step to MLflow -> checkpoint every
step (a killed run resumes) -> publish with lineage (base version, config hash, data hash).
A config already registered for the same base version is skipped.

Cluster (scale=cluster): writes the expert's verl parquet, composes the verl job from verl's own
config (`configs/verl/`, FSDP2 or Megatron) with the model path and data files, validates it on CPU
and submits it with `ray job submit` (DRY_RUN prints the command and the resolved overrides).
For the inquiry expert with pipeline=true, verl draws its batches from the segmented pipeline
(verl_pipeline.py) and reports stage scores back after each step, so the gate applies on the cluster.
"""

from __future__ import annotations

import json
import random
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from m3 import registry
from m3.config import (
    REPO_ROOT,
    ModelConfig,
    ScaleConfig,
    TrackingConfig,
    cluster_size,
    log_config,
    register_schema,
)
from m3.data.prompts import EXPERTS, data_hash, split_rows, write_parquet
from m3.rl.engine import LocalEngine, LocalRLConfig
from m3.rl.rubric_pool import DynamicRubricConfig
from m3.runs import StageRun
from stage1_expert_rl.data import build_rows

BACKEND = "offline judges/simulator"  # what the local run's rewards come from (demo table)


@dataclass
class Stage1Config:
    expert: str = "inquiry"
    model: ModelConfig = field(default_factory=ModelConfig)  # the preset: size, cluster group, alias
    base: str = "models:/m3-base@${model.alias}"
    data: str | None = None  # None: the expert's default (m3.data.prompts.SOURCES)
    n_prompts: int = 8  # prompts drawn from the data (local)
    heldout_prompts: int = 0  # the next prompts: mean greedy reward before and after training (local)
    max_inquiry_turns: int | None = None  # cap the inquiry stage of consultations (None: EpisodeConfig's)
    steps: int = 3
    prompts_per_step: int = 2
    rl: LocalRLConfig = field(default_factory=LocalRLConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    cluster_overrides: list[str] = field(default_factory=list)  # extra verl overrides
    pipeline: bool = True  # inquiry: SPAR's segmented pipeline (stages of different cases per batch)
    gate_tau: float = 0.5  # quality gate V_k >= tau between stages (OPEN in the paper)
    # healthcare: dynamic rubric evolution (m3.rl.rubric_pool); rubrics.dynamic=true switches it on
    rubrics: DynamicRubricConfig = field(default_factory=DynamicRubricConfig)
    dry_run: bool = False
    out_dir: str | None = None
    summary_out: str | None = None  # a one-line summary JSON (the demo's table reads it)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {self.expert!r}")
        if self.rubrics.dynamic and self.expert != "healthcare":
            raise ValueError(
                "rubrics.dynamic evolves the Healthcare expert's rubric: use it with expert=healthcare"
            )


register_schema("stage1_schema", Stage1Config)


def build_data(cfg: Stage1Config) -> tuple[list[dict], list[dict], str]:
    """(training rows, held-out rows, data hash): the first n_prompts locally (all on the cluster),
    then heldout_prompts more for the before/after evaluation (verl parquet schema)."""
    n = cfg.n_prompts + cfg.heldout_prompts
    rows = _cap_turns(build_rows(cfg.expert, cfg.data, n=max(n, 64), seed=0), cfg.max_inquiry_turns)
    if cfg.scale.name == "cluster":
        return rows, [], data_hash(rows)[:16]
    if len(rows) < n:
        raise ValueError(f"{cfg.expert}: {len(rows)} prompts, but n_prompts + heldout_prompts = {n}")
    train, held = rows[: cfg.n_prompts], rows[cfg.n_prompts : n]
    return train, held, data_hash(train + held)[:16]


def _cap_turns(rows: list[dict], max_inquiry_turns: int | None) -> list[dict]:
    if max_inquiry_turns is not None:
        for r in rows:
            if r["agent_name"] == "m3_consultation":
                r["extra_info"]["episode"] = {
                    **(r["extra_info"].get("episode") or {}),
                    "max_inquiry_turns": max_inquiry_turns,
                }
    return rows


def run_cluster(cfg: Stage1Config, rows: list[dict], out: Path) -> None:
    from m3.rl.verl_config import compose_verl_config, ray_job_command, validate

    train, val = split_rows(rows, val_fraction=0.05, seed=0)
    write_parquet(train, out / "train.parquet")
    write_parquet(val, out / "val.parquet")
    name = "stage1_expert" if cfg.scale.backend == "fsdp2" else "stage1_expert_megatron"
    pipeline = []
    if cfg.expert == "inquiry" and cfg.pipeline:  # verl draws the scheduler's tasks (verl_pipeline.py)
        from stage1_expert_rl.verl_pipeline import cluster_overrides

        pipeline = cluster_overrides(cfg.gate_tau, cfg.rl.seed)
    rubrics = []
    if cfg.rubrics.dynamic:  # verl dumps each step's rollouts; the miner sidecar updates the shared pool
        from stage1_expert_rl.rubric_miner import cluster_overrides as rubric_overrides

        rubrics = rubric_overrides(out)
    overrides = [
        f"{cfg.scale.backend}={cluster_size(cfg.model)}",
        f"actor_rollout_ref.model.path={registry.resolve(cfg.base)}",
        f"data.train_files={out / 'train.parquet'}",
        f"data.val_files={out / 'val.parquet'}",
        f"trainer.experiment_name=m3-expert-{cfg.expert}",
        *pipeline,
        *rubrics,
        *cfg.cluster_overrides,
    ]
    vcfg = compose_verl_config(name, overrides)
    validate(vcfg)
    cmd = ray_job_command(vcfg, address=cfg.scale.ray_address)
    if cfg.rubrics.dynamic:
        from stage1_expert_rl.rubric_miner import sidecar_command

        print("# dynamic rubrics: run the miner next to the job (head node, shared storage):")
        print(" ".join(sidecar_command(out, cfg.rubrics)))
    print(" ".join(cmd))
    if not cfg.dry_run:
        subprocess.run(cmd, check=True)


def main(cfg: Stage1Config):
    import mlflow

    registry.setup(cfg.tracking.experiment)
    name = f"m3-expert-{cfg.expert}"
    run = StageRun(
        name, cfg, stage="stage1", step=f"stage1-{cfg.expert}", parents=[cfg.base], alias=cfg.model.alias
    )
    out = Path(cfg.out_dir or REPO_ROOT / "outputs" / "stage1" / f"{cfg.expert}-{run.config_hash}")
    out.mkdir(parents=True, exist_ok=True)
    rows, held, dhash = build_data(cfg)
    if cfg.scale.name == "cluster":
        return run_cluster(cfg, rows, out)
    if (existing := run.up_to_date(cfg.summary_out, BACKEND)) is not None:
        return existing
    engine = LocalEngine(registry.resolve(cfg.base), cfg.rl, out)
    scheduler = _scheduler(cfg, rows, out)
    evolution = _evolution(cfg, out)
    rng = random.Random(cfg.rl.seed)
    history_path = out / "history.json"  # per step, so a resumed run keeps its first steps
    history = json.loads(history_path.read_text()) if history_path.is_file() else []
    history = [h for h in history if h["step"] <= engine.step]  # a step logged but not checkpointed reruns
    with mlflow.start_run(run_name=f"stage1-{cfg.expert}"):
        log_config(cfg)
        mlflow.set_tags({"m3.stage": "stage1", "m3.expert": cfg.expert, "m3.data_hash": dhash})
        evals = _heldout(engine, held, out / "heldout.json", "before")
        while engine.step < cfg.steps:
            tasks = scheduler.next_batch(cfg.prompts_per_step) if scheduler else None
            batch = (
                _cap_turns(_pipeline_rows(scheduler, tasks), cfg.max_inquiry_turns)
                if scheduler
                else rng.sample(rows, min(cfg.prompts_per_step, len(rows)))
            )
            if evolution is not None:
                batch = evolve_rows(evolution, batch)
            trajs = engine.rollout(batch)
            metrics = engine.update(trajs)
            if evolution is not None:
                metrics.update(_evolve(evolution, engine, batch, trajs, cfg))
            if scheduler is not None:
                metrics.update(_report(scheduler, tasks, trajs, cfg.rl.group_size))
                (out / "pipeline.json").write_text(json.dumps(scheduler.state_dict()))
            violations = [t.extra["violation_rate"] for t in trajs if "violation_rate" in t.extra]
            if violations:
                metrics["violation_rate"] = sum(violations) / len(violations)
            mlflow.log_metrics(metrics, step=engine.step)
            history.append({"step": engine.step, **metrics})
            history_path.write_text(json.dumps(history, indent=2))
            engine.save()
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("reward_mean", "pg_loss", "grad_norm"))
            print(f"[{cfg.expert}] step {engine.step}/{cfg.steps} {shown}", flush=True)
        _log_history(history, out)
        evals = _heldout(engine, held, out / "heldout.json", "after")
        if evals:
            mlflow.log_metrics({f"heldout/reward_{k}": v for k, v in evals.items()})
            metric, shown = (
                f"held-out reward ({len(held)} prompts) base->expert",
                (evals["before"], evals["after"]),
            )
        else:
            metric, shown = (
                "reward_mean first->last step",
                (history[0]["reward_mean"], history[-1]["reward_mean"]),
            )
        return run.publish(
            engine.export(out / "model"),
            summary_out=cfg.summary_out,
            metric=metric,
            value=f"{shown[0]:.3f}->{shown[1]:.3f} (v{{version}})",
            backend=BACKEND,
            data_hashes={cfg.expert: dhash},
            description=f"Stage-1 {cfg.expert} expert (`make stage1 EXPERT={cfg.expert}`).",
        )


def _pipeline_rows(scheduler, tasks) -> list[dict]:
    rows = scheduler.to_rows(tasks)
    if not rows:
        raise ValueError(
            "the pipeline has no task left: every case finished or was stopped by the gate; "
            "add cases (n_prompts) or lower gate_tau"
        )
    return rows


def _evolution(cfg: Stage1Config, out: Path):
    if not cfg.rubrics.dynamic:
        return None
    from m3.rl.rubric_miner import RubricEvolution

    return RubricEvolution(cfg.rubrics, out / "rubric_pool.json")  # resumes from the saved pool


def evolve_rows(evolution, rows: list[dict]) -> list[dict]:
    """Rows with the active dynamic items of their prompt and the pool version (injection)."""
    out = []
    for row in rows:
        info = dict(row["extra_info"])
        text = "\n".join(m["content"] for m in info["prompt"])
        info["dynamic_rubrics"], info["rubric_pool_version"] = (
            evolution.row_items(text),
            evolution.pool.version,
        )
        out.append({**row, "extra_info": info})
    return out


def _evolve(evolution, engine: LocalEngine, batch: list[dict], trajs, cfg: Stage1Config) -> dict[str, float]:
    """Mine the step's rollouts; at an epoch's end admit / retire and log the pool to MLflow."""
    import asyncio

    from m3.judges.base import RubricItem
    from m3.rl.rubric_miner import Rollout

    rollouts = []
    for i, t in enumerate(trajs):
        info = batch[i // cfg.rl.group_size]["extra_info"]
        core = [
            RubricItem(r["criterion"], float(r["points"]), tuple(r.get("tags", ()))) for r in info["rubrics"]
        ]
        text = engine.tokenizer.decode(t.response_ids, skip_special_tokens=True)
        rollouts.append(
            Rollout(
                f"s{engine.step}-{info['prompt_id']}-{i}",
                list(info["prompt"]),
                text,
                float(t.extra["r_task"]),
                core,
            )
        )
    flaws = asyncio.run(evolution.step(engine.step, rollouts))
    steps_per_epoch = max(1, -(-cfg.n_prompts // cfg.prompts_per_step))
    if engine.step % steps_per_epoch == 0:
        epoch = engine.step // steps_per_epoch
        asyncio.run(evolution.end_epoch(epoch, engine.step))
        evolution.pool.log_to_mlflow(epoch)
    counts = {
        s: sum(it.status == s for it in evolution.pool.items.values())
        for s in ("candidate", "active", "retired")
    }
    return {"rubric_pool/flaws": len(flaws), **{f"rubric_pool/{k}": v for k, v in counts.items()}}


def _heldout(engine: LocalEngine, held: list[dict], path: Path, when: str) -> dict[str, float]:
    """Mean greedy reward on the held-out rows `when` ("before" / "after"), kept in `path` so a
    resumed run does not re-measure the base; {} without held-out rows."""
    if not held:
        return {}
    evals = json.loads(path.read_text()) if path.is_file() else {}
    if when == "before" and engine.step > 0:  # resumed past the base: never score a trained model as it
        return evals
    if when not in evals:
        evals[when] = engine.evaluate(held)
        path.write_text(json.dumps(evals))
        print(f"held-out reward {when}: {evals[when]:.4f}", flush=True)
    return evals


def _log_history(history: list[dict], out: Path) -> None:
    import mlflow

    mlflow.log_artifact(str(out / "history.json"))
    _plot(history, out / "rewards.png")
    mlflow.log_artifact(str(out / "rewards.png"))
    if (out / "rubric_pool.json").is_file():  # dynamic rubrics: the pool's history as a picture
        from m3.rl.rubric_pool import RubricPool, plot_history

        pool = RubricPool.load(out / "rubric_pool.json")
        counts = [h for h in history if "rubric_pool/active" in h]
        mlflow.log_artifact(str(plot_history(pool.history, out / "rubric_pool.png", counts)))


def _scheduler(cfg: Stage1Config, rows: list[dict], out: Path):
    """The inquiry expert's pipeline scheduler over the rows' cases (resumed from out/pipeline.json)."""
    if cfg.expert != "inquiry" or not cfg.pipeline:
        return None
    from m3.clinic.cases import ClinicalCase
    from stage1_expert_rl.pipeline import PipelineConfig, PipelineScheduler

    # fill_idle_slots: local batches are smaller than the four stages, so free slots admit new cases
    scheduler = PipelineScheduler(
        PipelineConfig(gate_tau=cfg.gate_tau, fill_idle_slots=True, seed=cfg.rl.seed)
    )
    scheduler.add_cases([ClinicalCase.from_dict(json.loads(r["extra_info"]["case"])) for r in rows])
    state = out / "pipeline.json"
    if state.is_file():
        scheduler.load_state_dict(json.loads(state.read_text()))
    return scheduler


def _report(scheduler, tasks, trajs, group_size: int) -> dict[str, float]:
    """Gate each task on its stage verifier V_k (the best rollout of its group is carried forward)."""
    from m3.clinic.transcript import Transcript

    for i, task in enumerate(tasks):
        group = trajs[i * group_size : (i + 1) * group_size]
        rollouts = [
            (
                Transcript.from_dict(t.fields["transcript"]),
                float(t.fields["stage_scores"].get(task.stage, 0.0)),
            )
            for t in group
        ]
        scheduler.report_group(task, rollouts)
    return {k: float(v) for k, v in scheduler.metrics().items()}  # keys already read "pipeline/..."


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    axes[0].plot(steps, [h["reward_mean"] for h in history], marker="o")
    axes[0].set_title("mean reward")
    axes[1].plot(steps, [h["pg_loss"] for h in history], marker="o", color="#C44E52")
    axes[1].set_title("policy loss")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
