"""Stage 3: MOPD, multi-teacher on-policy distillation with task rewards, routed by domain.

    make stage3                                   # local: tiny m3-distill student, tiny experts as teachers
    make stage3 ARGS="alpha=0.5 steps=8"
    DRY_RUN=1 make stage3 SCALE=cluster ARGS="model=qwen3_235b_a22b"   # the verl job, printed

Local (scale=local), one readable loop: config -> the student in the local engine (m3.rl.engine, the
same rollouts, reward functions and estimators as stage 1) and the three experts, frozen ->
per step: rollouts from the student on one prompt per domain (mu_theta = the sampler's log-probs) ->
task rewards -> A_ORM (SPAR for consultations, GRPO otherwise; m3.rl.engine.task_advantages) ->
teacher log-probs of the student's tokens from the expert of each sample's domain (simulator turns
are context only: mask 0) -> the MOPD loss (stage3_mopd/losses.py) -> AdamW step -> per-domain
reverse KL (sampled estimate), task reward and importance-masked fraction to MLflow -> checkpoint
(resumes) -> exact reverse KL (full vocabulary) on fixed held-out student contexts, before/after ->
register `m3-mopd` with lineage to the student and every teacher.

Cluster (scale=cluster): writes the mixed-domain parquet, composes the verl job from
configs/verl/stage3_mopd[_megatron].yaml (verl's built-in multi-teacher distillation with our
`m3_mopd` loss; see stage3_mopd/verl_loss.py for what verl's own losses cannot express), validates
it and submits `ray job submit` (DRY_RUN prints it).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
from m3.data.prompts import DOMAINS, data_hash, domain_rows, split_rows, write_parquet
from m3.rl.engine import LocalEngine, LocalRLConfig, Trajectory, response_logprobs, task_advantages
from m3.runs import StageRun
from stage3_mopd.data import DOMAIN_OF_SOURCE, MAX_INQUIRY_TURNS, cluster_rows
from stage3_mopd.losses import mopd_loss

BACKEND = "offline judges/simulator"  # what the task rewards come from (demo table)


@dataclass
class Stage3Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the preset: size, cluster group, alias
    student: str = "models:/m3-distill@${model.alias}"
    teachers: dict[str, str] = field(
        default_factory=lambda: {d: f"models:/m3-expert-{d}@${{model.alias}}" for d in DOMAINS}
    )
    alpha: float = 1.0  # weight of the task advantage A_ORM (OPEN in the paper)
    eps_low: float = 0.5  # importance window on pi_theta/mu_theta (OPEN; a published MOPD choice)
    eps_high: float = 2.0
    prompts_per_domain: int = 3  # training prompts per domain (local)
    heldout_per_domain: int = 1  # held-out prompts per domain for the reverse-KL eval
    steps: int = 4
    rl: LocalRLConfig = field(
        default_factory=lambda: LocalRLConfig(
            group_size=2, lr=1e-2, optimizer="sgd", max_new_tokens=16, max_response_length=384
        )
    )
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    cluster_prompts_per_domain: int = 64
    cluster_overrides: list[str] = field(default_factory=list)
    dry_run: bool = False
    out_dir: str | None = None
    summary_out: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if set(self.teachers) != set(DOMAINS):
            raise ValueError(f"teachers needs exactly the domains {DOMAINS}, got {sorted(self.teachers)}")
        if not 0.0 <= self.eps_low <= 1.0 <= self.eps_high:
            raise ValueError(f"need 0 <= eps_low <= 1 <= eps_high, got {self.eps_low}, {self.eps_high}")


register_schema("stage3_schema", Stage3Config)


# --- the pieces of one step ------------------------------------------------------------------------
def load_teachers(teachers: dict[str, str]) -> dict[str, torch.nn.Module]:
    """The frozen expert of each domain (float32, eval mode, no gradients)."""
    from transformers import AutoModelForCausalLM

    out = {}
    for domain, uri in teachers.items():
        model = AutoModelForCausalLM.from_pretrained(registry.resolve(uri), dtype=torch.float32).eval()
        model.requires_grad_(False)
        out[domain] = model
    return out


def teacher_logprobs(teachers: dict[str, torch.nn.Module], trajs: list[Trajectory]) -> torch.Tensor:
    """log pi_domain(y_t) (B, T): each trajectory scored by the teacher of its data_source."""
    T = max(len(t.response_ids) for t in trajs)
    out = torch.zeros(len(trajs), T)
    with torch.no_grad():
        for domain in DOMAINS:
            rows = [i for i, t in enumerate(trajs) if DOMAIN_OF_SOURCE[t.data_source] == domain]
            if rows:
                lp, _ = response_logprobs(teachers[domain], [trajs[i] for i in rows])
                out[rows, : lp.shape[1]] = lp
    return out


def behaviour_logprobs(trajs: list[Trajectory], student_BT: torch.Tensor) -> torch.Tensor:
    """log mu_theta(y_t): the sampler's log-probs; the student's own where the sampler gave none."""
    out = student_BT.detach().clone()
    for i, t in enumerate(trajs):
        if t.logprobs and len(t.logprobs) == len(t.response_ids):
            out[i, : len(t.logprobs)] = torch.tensor(t.logprobs)
    return out


def per_domain(values_BT: torch.Tensor, mask_BT: torch.Tensor, trajs: list[Trajectory]) -> dict[str, float]:
    """Token mean of values over the student's tokens, per domain present in the batch."""
    out = {}
    for domain in DOMAINS:
        rows = [i for i, t in enumerate(trajs) if DOMAIN_OF_SOURCE[t.data_source] == domain]
        if rows:
            m = mask_BT[rows]
            out[domain] = float((values_BT[rows] * m).sum() / m.sum().clamp(min=1))
    return out


def mopd_step(engine: LocalEngine, teachers, trajs: list[Trajectory], cfg: Stage3Config) -> dict[str, float]:
    """One MOPD optimisation step on the student's rollouts; returns the step's metrics."""
    engine.model.train()
    student, mask = response_logprobs(engine.model, trajs)
    teacher = teacher_logprobs(teachers, trajs)
    orm = task_advantages(trajs, mask) if cfg.alpha != 0 else torch.zeros_like(student)
    loss, stats = mopd_loss(
        student, teacher, behaviour_logprobs(trajs, student), orm, mask, cfg.alpha, cfg.eps_low, cfg.eps_high
    )
    engine.optim.zero_grad()
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(engine.model.parameters(), engine.cfg.grad_clip)
    engine.optim.step()
    engine.step += 1
    metrics = {
        "loss": float(loss.detach()),
        "grad_norm": float(grad_norm),
        **{k: float(v) for k, v in stats.items()},
    }
    rkl = per_domain((student - teacher).detach(), mask, trajs)
    metrics.update({f"reverse_kl/{d}": v for d, v in rkl.items()})
    for domain in DOMAINS:
        rewards = [t.reward for t in trajs if DOMAIN_OF_SOURCE[t.data_source] == domain]
        if rewards:
            metrics[f"reward/{domain}"] = sum(rewards) / len(rewards)
    return metrics


def exact_reverse_kl(student, teacher, traj: Trajectory) -> torch.Tensor:
    """KL(pi_theta || pi_domain) over the full vocabulary at each student token of one trajectory (n,)."""
    ids = torch.tensor([traj.prompt_ids + traj.response_ids])
    p = len(traj.prompt_ids)
    s = torch.log_softmax(student(ids).logits[0, p - 1 : -1].float(), -1)
    t = torch.log_softmax(teacher(ids).logits[0, p - 1 : -1].float(), -1)
    kl = (s.exp() * (s - t)).sum(-1)
    return kl[torch.tensor(traj.response_mask, dtype=torch.bool)]


def heldout_contexts(engine: LocalEngine, rows: list[dict], path: Path) -> list[Trajectory]:
    """Held-out student rollouts, sampled once and kept (path), so before/after compare the same contexts."""
    if path.is_file():
        return [Trajectory(**t) for t in json.loads(path.read_text())]
    engine.score = False  # no reward calls: only the distributions are compared
    try:
        trajs = engine.rollout(rows)
    finally:
        engine.score = True
    path.write_text(json.dumps([t.__dict__ for t in trajs]))
    return trajs


def heldout_reverse_kl(model, teachers, trajs: list[Trajectory]) -> dict[str, float]:
    """Per-domain exact reverse KL to the domain's teacher, averaged over the held-out student tokens."""
    out = {}
    with torch.no_grad():
        for domain in DOMAINS:
            kls = [
                exact_reverse_kl(model, teachers[domain], t)
                for t in trajs
                if DOMAIN_OF_SOURCE[t.data_source] == domain
            ]
            if kls:
                out[f"eval/reverse_kl/{domain}"] = float(torch.cat(kls).mean())
    return out


# --- cluster ----------------------------------------------------------------------------------------
def run_cluster(cfg: Stage3Config, out: Path) -> None:
    from m3.rl.verl_config import compose_verl_config, ray_job_command, validate
    from stage3_mopd.verl_loss import check_config

    rows = cluster_rows(cfg.cluster_prompts_per_domain)
    train, val = split_rows(rows, val_fraction=0.05, seed=0)
    write_parquet(train, out / "train.parquet")
    write_parquet(val, out / "val.parquet")
    name = "stage3_mopd" if cfg.scale.backend == "fsdp2" else "stage3_mopd_megatron"
    overrides = [
        f"{cfg.scale.backend}={cluster_size(cfg.model)}",
        f"mopd_teachers={cluster_size(cfg.model)}",
        f"actor_rollout_ref.model.path={_cluster_path(cfg.student)}",
        *[f"distillation.teacher_models.{d}.model_path={_cluster_path(cfg.teachers[d])}" for d in DOMAINS],
        f"distillation.distillation_loss.alpha={cfg.alpha}",
        f"distillation.distillation_loss.eps_low={cfg.eps_low}",
        f"distillation.distillation_loss.eps_high={cfg.eps_high}",
        f"data.train_files={out / 'train.parquet'}",
        f"data.val_files={out / 'val.parquet'}",
        "trainer.experiment_name=m3-mopd",
        *cfg.cluster_overrides,
    ]
    vcfg = compose_verl_config(name, overrides)
    validate(vcfg)
    check_config(vcfg)
    cmd = ray_job_command(vcfg, address=cfg.scale.ray_address)
    print(" ".join(cmd))
    if not cfg.dry_run:
        subprocess.run(cmd, check=True)


def _cluster_path(uri: str) -> str:
    """A registered model's directory (checkpoints of real size are registered by reference)."""
    return str(registry.resolve(uri))


# --- main -------------------------------------------------------------------------------------------
def main(cfg: Stage3Config):
    import mlflow

    registry.setup(cfg.tracking.experiment)
    parents = [cfg.student, *[cfg.teachers[d] for d in DOMAINS]]
    run = StageRun("m3-mopd", cfg, stage="stage3", parents=parents, alias=cfg.model.alias)
    out = Path(cfg.out_dir or REPO_ROOT / "outputs" / "stage3" / run.config_hash)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.scale.name == "cluster":
        return run_cluster(cfg, out)
    if (existing := run.up_to_date(cfg.summary_out, BACKEND)) is not None:
        return existing
    n, turns = cfg.prompts_per_domain, MAX_INQUIRY_TURNS
    train_rows = {d: domain_rows(d, n, max_inquiry_turns=turns) for d in DOMAINS}
    held_rows = [
        r for d in DOMAINS for r in domain_rows(d, cfg.heldout_per_domain, n, max_inquiry_turns=turns)
    ]
    dhash = data_hash([r for d in DOMAINS for r in train_rows[d]] + held_rows)[:16]
    engine = LocalEngine(registry.resolve(cfg.student), cfg.rl, out)  # resumes from out/checkpoint
    teachers = load_teachers(cfg.teachers)
    hist_path = out / "history.json"
    state = json.loads(hist_path.read_text()) if engine.step and hist_path.is_file() else {"history": []}
    with mlflow.start_run(run_name="stage3-mopd"):
        log_config(cfg)
        mlflow.set_tags({"m3.stage": "stage3", "m3.data_hash": dhash})
        held = heldout_contexts(engine, held_rows, out / "heldout_contexts.json")
        if "eval_before" not in state:
            state["eval_before"] = heldout_reverse_kl(engine.model, teachers, held)
            mlflow.log_metrics(state["eval_before"], step=0)
        while engine.step < cfg.steps:
            batch = [train_rows[d][engine.step % n] for d in DOMAINS]  # one prompt per domain per step
            metrics = mopd_step(engine, teachers, engine.rollout(batch), cfg)
            mlflow.log_metrics(metrics, step=engine.step)
            state["history"].append({"step": engine.step, **metrics})
            engine.save()
            hist_path.write_text(json.dumps(state, indent=2))  # with the checkpoint: a killed run resumes
            rkl = " ".join(
                f"rKL[{d}]={metrics[f'reverse_kl/{d}']:.3f}" for d in DOMAINS if f"reverse_kl/{d}" in metrics
            )
            print(f"[mopd] step {engine.step}/{cfg.steps} loss={metrics['loss']:.4f} {rkl}", flush=True)
        state["eval_after"] = heldout_reverse_kl(engine.model, teachers, held)
        mlflow.log_metrics(state["eval_after"], step=cfg.steps)
        hist_path.write_text(json.dumps(state, indent=2))
        mlflow.log_artifact(str(hist_path))
        _plot(state["history"], out / "reverse_kl.png")
        mlflow.log_artifact(str(out / "reverse_kl.png"))
        before, after = state["eval_before"], state["eval_after"]
        change = ", ".join(
            f"{k.split('/')[-1]} {before[k]:.3g}->{after[k]:.3g}" for k in after if k in before
        )
        print(f"held-out reverse KL to the teacher: {change}")
        return run.publish(
            engine.export(out / "model"),
            summary_out=cfg.summary_out,
            metric="held-out reverse KL to teacher",
            value=f"{change} (v{{version}})",
            backend=BACKEND,
            data_hashes={"mopd_prompts": dhash},
            description="MOPD student: on-policy distillation from the three experts with task rewards (`make stage3`).",
        )


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for d in DOMAINS:
        pts = [(h["step"], h[f"reverse_kl/{d}"]) for h in history if f"reverse_kl/{d}" in h]
        if pts:
            ax[0].plot(*zip(*pts, strict=True), marker="o", label=d)
        pts = [(h["step"], h[f"reward/{d}"]) for h in history if f"reward/{d}" in h]
        if pts:
            ax[1].plot(*zip(*pts, strict=True), marker="o", label=d)
    ax[0].set(title="reverse KL to the domain's teacher", xlabel="step")
    ax[1].set(title="task reward", xlabel="step")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
