"""Stage 1: train one domain expert with RL and register it as `m3-expert-<expert>`.

    make stage1 EXPERT=inquiry                        # local: tiny model, CPU, a few SPAR steps
    make stage1 EXPERT=healthcare ARGS="steps=5"
    DRY_RUN=1 make stage1 EXPERT=inquiry SCALE=cluster ARGS="cluster_size=qwen3_235b_a22b"

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
from m3.config import REPO_ROOT, ScaleConfig, TrackingConfig, config_hash, log_config, register_schema
from m3.engine import LocalEngine, LocalRLConfig
from m3.report import write_summary

EXPERTS = ("inquiry", "healthcare", "general")
BACKEND = "offline judges/simulator"  # what the local run's rewards come from (demo table)
DEFAULT_DATA = {
    "inquiry": "data/agentclinic_medqa.jsonl",
    "healthcare": "data/healthbench_sample30.jsonl",
    "general": None,  # generated verifiable-instruction prompts
}


@dataclass
class Stage1Config:
    expert: str = "inquiry"
    base: str = "models:/m3-base@candidate"
    data: str | None = None  # None: the expert's default (DEFAULT_DATA)
    n_prompts: int = 8  # prompts drawn from the data (local)
    steps: int = 3
    prompts_per_step: int = 2
    rl: LocalRLConfig = field(default_factory=LocalRLConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    cluster_backend: str = "fsdp2"  # fsdp2 | megatron
    cluster_size: str = "qwen3_8b"  # qwen3_8b | qwen3_30b_a3b | qwen3_235b_a22b
    cluster_overrides: list[str] = field(default_factory=list)  # extra verl overrides
    pipeline: bool = True  # inquiry: SPAR's segmented pipeline (stages of different cases per batch)
    gate_tau: float = 0.5  # quality gate V_k >= tau between stages (OPEN in the paper)
    dry_run: bool = False
    out_dir: str | None = None
    summary_out: str | None = None  # a one-line summary JSON (the demo's table reads it)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.expert not in EXPERTS:
            raise ValueError(f"expert must be one of {EXPERTS}, got {self.expert!r}")


register_schema("stage1_schema", Stage1Config)


def build_rows(cfg: Stage1Config) -> tuple[list[dict], str]:
    """The expert's rows (verl parquet schema) and their data hash."""
    from stage1_expert_rl import data

    source = cfg.data or DEFAULT_DATA[cfg.expert]
    if source is not None and not Path(source).is_absolute():
        source = str(REPO_ROOT / source)
    rows = data.build_rows(cfg.expert, source, n=max(cfg.n_prompts, 64), seed=0)
    rows = rows[: cfg.n_prompts] if cfg.scale.name == "local" else rows
    return rows, data.data_hash(rows)[:16]


def run_cluster(cfg: Stage1Config, rows: list[dict], out: Path) -> None:
    from m3.verl_config import compose_verl_config, ray_job_command, validate
    from stage1_expert_rl import data

    train, val = data.split_rows(rows, val_fraction=0.05, seed=0)
    data.write_parquet(train, out / "train.parquet")
    data.write_parquet(val, out / "val.parquet")
    name = "stage1_expert" if cfg.cluster_backend == "fsdp2" else "stage1_expert_megatron"
    base = registry.resolve(cfg.base)
    pipeline = []
    if cfg.expert == "inquiry" and cfg.pipeline:  # verl draws the scheduler's tasks (verl_pipeline.py)
        from stage1_expert_rl.verl_pipeline import cluster_overrides

        pipeline = cluster_overrides(cfg.gate_tau, cfg.rl.seed)
    overrides = [
        f"{cfg.cluster_backend}={cfg.cluster_size}",
        f"actor_rollout_ref.model.path={base}",
        f"data.train_files={out / 'train.parquet'}",
        f"data.val_files={out / 'val.parquet'}",
        f"trainer.experiment_name=m3-expert-{cfg.expert}",
        *pipeline,
        *cfg.cluster_overrides,
    ]
    vcfg = compose_verl_config(name, overrides)
    validate(vcfg)
    cmd = ray_job_command(vcfg, address=cfg.scale.ray_address)
    print(" ".join(cmd))
    if not cfg.dry_run:
        subprocess.run(cmd, check=True)


def main(cfg: Stage1Config):
    import mlflow

    name = f"m3-expert-{cfg.expert}"
    registry.setup(cfg.tracking.experiment)
    chash = config_hash(cfg, exclude=("tracking", "out_dir", "dry_run", "summary_out"))
    out = Path(cfg.out_dir) if cfg.out_dir else REPO_ROOT / "outputs" / "stage1" / f"{cfg.expert}-{chash}"
    out.mkdir(parents=True, exist_ok=True)
    rows, dhash = build_rows(cfg)
    if cfg.scale.name == "cluster":
        return run_cluster(cfg, rows, out)
    existing = registry.find_version(name, chash, [cfg.base])
    if existing is not None:
        registry._client().set_registered_model_alias(name, "candidate", existing.version)
        print(f"{name}: up to date (version {existing.version}, config {chash})")
        step = f"stage1-{cfg.expert}"
        write_summary(cfg.summary_out, step, "registered (up to date)", f"v{existing.version}", BACKEND)
        return existing
    engine = LocalEngine(registry.resolve(cfg.base), cfg.rl, out)
    rng = random.Random(cfg.rl.seed)
    history: list[dict] = []
    with mlflow.start_run(run_name=f"stage1-{cfg.expert}"):
        log_config(cfg)
        mlflow.set_tags({"m3.stage": "stage1", "m3.expert": cfg.expert, "m3.data_hash": dhash})
        scheduler = _scheduler(cfg, rows, out)
        while engine.step < cfg.steps:
            if scheduler is not None:  # segmented pipeline: tasks of different cases at different stages
                tasks = scheduler.next_batch(cfg.prompts_per_step)
                batch = scheduler.to_rows(tasks)
                if not batch:
                    raise ValueError(
                        "the pipeline has no task left: every case finished or was stopped by "
                        "the gate; add cases (n_prompts) or lower gate_tau"
                    )
            else:
                batch = rng.sample(rows, min(cfg.prompts_per_step, len(rows)))
            trajs = engine.rollout(batch)
            metrics = engine.update(trajs)
            if scheduler is not None:
                metrics.update(_report(scheduler, tasks, trajs, cfg.rl.group_size))
                (out / "pipeline.json").write_text(json.dumps(scheduler.state_dict()))
            violations = [t.extra.get("violation_rate", 0.0) for t in trajs if "violation_rate" in t.extra]
            if violations:
                metrics["violation_rate"] = sum(violations) / len(violations)
            mlflow.log_metrics(metrics, step=engine.step)
            history.append({"step": engine.step, **metrics})
            engine.save()
            print(
                f"[{cfg.expert}] step {engine.step}/{cfg.steps} "
                + " ".join(
                    f"{k}={v:.4f}" for k, v in metrics.items() if k in ("reward_mean", "pg_loss", "grad_norm")
                )
            )
        (out / "history.json").write_text(json.dumps(history, indent=2))
        mlflow.log_artifact(str(out / "history.json"))
        _plot(history, out / "rewards.png")
        mlflow.log_artifact(str(out / "rewards.png"))
        mv = registry.publish(
            engine.export(out / "model"),
            name,
            stage="stage1",
            parents=[cfg.base],
            config=cfg,
            data_hashes={cfg.expert: dhash},
            tags={"m3.config_hash": chash},  # the hash find_version compares (run-location keys excluded)
            description=f"Stage-1 {cfg.expert} expert (`make stage1 EXPERT={cfg.expert}`).",
        )
    print(f"{name}: registered version {mv.version} (models:/{name}@candidate)")
    if history:
        first, last = history[0]["reward_mean"], history[-1]["reward_mean"]
        value = f"{first:.3f}->{last:.3f} (v{mv.version})"
        write_summary(cfg.summary_out, f"stage1-{cfg.expert}", "reward_mean first->last step", value, BACKEND)
    return mv


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
