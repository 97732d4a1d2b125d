"""Stage 2: offline distillation of the three experts into one student with Clip-Forward-KL.

    make stage2                                  # local: tiny experts -> teacher data -> student
    make stage2 ARGS="loss=fkl steps=20"          # the forward-KL ablation
    DRY_RUN=1 make stage2 SCALE=cluster ARGS="model=qwen3_235b_a22b scale.backend=megatron"

Config -> teacher rollouts (each `m3-expert-<domain>@<alias>` on its own domain's prompts, with
log-probs; cached by config in the run directory) -> a plain loop over mixture-weighted batches:
student hidden states -> chunked log-probs of the teacher tokens -> Clip-FKL (or forward-KL) ->
AdamW -> per-domain losses, masked fraction and a held-out per-domain eval (mean student log-prob
of the teacher's tokens) to MLflow -> register `m3-distill` with lineage to the student's init and
every teacher, plus the data hash.

Cluster (scale=cluster; `DRY_RUN=1 make stage2 SCALE=cluster ARGS="model=qwen3_235b_a22b"`):
writes each domain's prompt rows (JSON lines) to out_dir (put it on the shared file system), then per
domain a vLLM offline batch job of its teacher (`stage2_distill/vllm_teacher.py`, `ray job submit`)
writing the teacher records, then verl's SFT trainer with Clip-FKL on those records
(`stage2_distill/verl_sft.py`, composed from configs/verl/stage2_sft*.yaml and validated on CPU).
dry_run prints the commands; otherwise they run one after another. The resulting checkpoint is not
registered automatically (as in stages 1 and 3 on the cluster).
"""

from __future__ import annotations

import json
import random
import shlex
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
from m3.data.prompts import DOMAINS, domain_rows
from m3.rl.engine import LocalRLConfig, freeze_below
from m3.runs import StageRun
from stage2_distill.losses import clip_forward_kl_loss, forward_kl_nll_loss, gather_logprobs_chunked
from stage2_distill.records import read_records, write_records
from stage2_distill.rollouts import teacher_samples


@dataclass
class Stage2Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the preset: size, cluster group, alias
    init: str = "models:/m3-base@${model.alias}"  # the student's starting point (base or an expert)
    teachers: dict[str, str] = field(
        default_factory=lambda: {d: f"models:/m3-expert-{d}@${{model.alias}}" for d in DOMAINS}
    )
    mixture: dict[str, float] = field(
        default_factory=lambda: {"inquiry": 1.0, "healthcare": 1.0, "general": 1.0}
    )
    prompts_per_domain: int = 4
    heldout_per_domain: int = 1
    loss: str = "clip_fkl"  # clip_fkl | fkl (ablation)
    norm: str = "token"  # token | active | sequence (see stage2_distill/losses.py)
    steps: int = 10
    batch_size: int = 4
    lr: float = 5e-4
    trainable_layers: int | None = None  # None: full fine-tuning; k: the top k layers (CPU size)
    chunk_size: int = 1024
    rollout: LocalRLConfig = field(
        default_factory=lambda: LocalRLConfig(max_new_tokens=24, max_response_length=512)
    )
    scale: ScaleConfig = field(default_factory=ScaleConfig)  # scale.backend: the verl SFT engine
    max_inquiry_turns: int | None = 3  # local: short consultations (small teachers ramble); cluster: full
    cluster_prompts_per_domain: int = 64
    cluster_max_tokens: int = 4096  # per teacher response (per doctor turn in consultations)
    cluster_max_response_length: int = 16384  # a whole consultation
    cluster_overrides: list[str] = field(default_factory=list)  # extra overrides of the SFT job
    dry_run: bool = False
    out_dir: str | None = None
    summary_out: str | None = None
    seed: int = 0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.loss not in ("clip_fkl", "fkl"):
            raise ValueError(f"loss must be 'clip_fkl' or 'fkl', got {self.loss!r}")
        if set(self.teachers) != set(DOMAINS) or set(self.mixture) != set(DOMAINS):
            raise ValueError(f"teachers and mixture need exactly the domains {DOMAINS}")


register_schema("stage2_schema", Stage2Config)


def build_data(cfg: Stage2Config, out: Path) -> tuple[dict[str, list[dict]], dict[str, list[dict]], str]:
    """Teacher records per domain (train, held-out) and the data hash; reused when already written."""
    path = out / "teacher_data.parquet"
    if not path.is_file():
        records = []
        for d in DOMAINS:
            n = cfg.prompts_per_domain + cfg.heldout_per_domain
            rows = domain_rows(d, n, max_inquiry_turns=cfg.max_inquiry_turns)
            records += teacher_samples(
                registry.resolve(cfg.teachers[d]), d, rows, cfg.rollout, out / f"tmp-{d}"
            )
        write_records(records, path)
    records = read_records(path)
    dhash = registry.data_hash(path)
    train, held = {d: [] for d in DOMAINS}, {d: [] for d in DOMAINS}
    for r in records:
        (held if len(held[r["domain"]]) < cfg.heldout_per_domain else train)[r["domain"]].append(r)
    return train, held, dhash


def _batch(records: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(input ids B x L, target positions mask B x L-1, teacher logp B x L-1, targets) right-padded."""
    seqs = [r["prompt_ids"] + r["response_ids"] for r in records]
    L = max(map(len, seqs))
    ids = torch.zeros((len(seqs), L), dtype=torch.long)  # right padding: masked, any valid id does
    mask = torch.zeros(len(seqs), L - 1)
    teacher = torch.zeros(len(seqs), L - 1)
    for i, (r, s) in enumerate(zip(records, seqs, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        p = len(r["prompt_ids"])
        n = len(r["response_ids"])
        mask[i, p - 1 : p - 1 + n] = torch.tensor(r["loss_mask"], dtype=torch.float32)
        teacher[i, p - 1 : p - 1 + n] = torch.tensor(r["teacher_logprobs"])
    return ids, mask, teacher, ids[:, 1:], L


def student_logprobs(model, records: list[dict], chunk_size: int):
    ids, mask, teacher, targets, _ = _batch(records)
    hidden = model.model(input_ids=ids).last_hidden_state[:, :-1]  # position t predicts token t+1
    logp = gather_logprobs_chunked(hidden, model.lm_head.weight, targets, chunk_size=chunk_size)
    return logp, teacher, mask


def evaluate(model, held: dict[str, list[dict]], chunk_size: int) -> dict[str, float]:
    """Per domain, on held-out teacher samples: the student's mean log-prob of the teacher's tokens, and
    KL(teacher || student) per token by its Monte-Carlo (k1) estimate mean(log q - log p_student) over
    the same tokens (q: the teacher's log-prob of its own sampled token, as recorded)."""
    out = {}
    with torch.no_grad():
        for d, recs in held.items():
            if recs:
                logp, teacher, mask = student_logprobs(model, recs, chunk_size)
                n = mask.sum().clamp(min=1)
                out[f"eval/{d}/teacher_token_logp"] = float((logp * mask).sum() / n)
                out[f"eval/{d}/kl_teacher_student"] = float(((teacher - logp) * mask).sum() / n)
    return out


def run_cluster(cfg: Stage2Config, out: Path) -> list[list[str]]:
    """Rows per domain, one vLLM teacher job per domain, then the validated verl SFT job; returns the argvs."""
    from stage2_distill import verl_sft, vllm_teacher

    out.mkdir(parents=True, exist_ok=True)
    commands = []
    for d in DOMAINS:
        rows_path = out / f"rows-{d}.jsonl"
        vllm_teacher.write_rows(domain_rows(d, cfg.cluster_prompts_per_domain), rows_path)
        commands.append(
            vllm_teacher.teacher_command(
                registry.resolve(cfg.teachers[d]),
                d,
                rows_path,
                out / f"teacher-{d}.parquet",
                tensor_parallel_size=vllm_teacher.TEACHER_TP[cluster_size(cfg.model)],
                temperature=cfg.rollout.temperature,
                max_tokens=cfg.cluster_max_tokens,
                max_response_length=cfg.cluster_max_response_length,
                seed=cfg.seed,
                ray_address=cfg.scale.ray_address,
            )
        )
    files = ",".join(str(out / f"teacher-{d}.parquet") for d in DOMAINS)
    overrides = [
        f"sft_{cfg.scale.backend}={cluster_size(cfg.model)}",
        f"model.path={registry.resolve(cfg.init)}",
        f"data.train_files=[{files}]",
        *[f"data.mixture.{d}={float(cfg.mixture[d])}" for d in DOMAINS],
        f"data.mixture_seed={cfg.seed}",
        f"m3_distill.loss={cfg.loss}",
        f"m3_distill.norm={cfg.norm}",
        *cfg.cluster_overrides,
    ]
    vcfg = verl_sft.compose(cfg.scale.backend, overrides)
    verl_sft.validate(vcfg)
    commands.append(verl_sft.ray_job_command(vcfg, address=cfg.scale.ray_address))
    print(f"# stage 2 on the cluster: {len(DOMAINS)} teacher jobs (vLLM), then the student (verl SFT)")
    for cmd in commands:
        print(shlex.join(cmd))
    if not cfg.dry_run:
        for cmd in commands:  # `ray job submit` waits for each job: the teacher data exists before training
            subprocess.run(cmd, check=True)
    return commands


def main(cfg: Stage2Config):
    import mlflow
    from transformers import AutoTokenizer

    registry.setup(cfg.tracking.experiment)
    parents = [cfg.init, *[cfg.teachers[d] for d in DOMAINS]]
    run = StageRun("m3-distill", cfg, stage="stage2", parents=parents, alias=cfg.model.alias)
    if cfg.scale.name == "cluster":
        return run_cluster(
            cfg, Path(cfg.out_dir or REPO_ROOT / "outputs" / "stage2" / f"cluster-{run.config_hash}")
        )
    if (existing := run.up_to_date(cfg.summary_out, cfg.loss)) is not None:
        return existing
    out = Path(cfg.out_dir or REPO_ROOT / "outputs" / "stage2" / run.config_hash)
    train_recs, held, dhash = build_data(cfg, out)
    init_dir = registry.resolve(cfg.init)
    with mlflow.start_run(run_name=f"stage2-{cfg.loss}"):
        log_config(cfg)
        mlflow.set_tags({"m3.stage": "stage2", "m3.data_hash": dhash})
        model, before, after = train_student(cfg, init_dir, train_recs, held, out)
        model.save_pretrained(out / "model", safe_serialization=True)
        AutoTokenizer.from_pretrained(init_dir).save_pretrained(out / "model")
        keys = [k for k in after if k.endswith("/teacher_token_logp")]
        logp = ", ".join(f"{k.split('/')[1]} {before[k]:.3f}->{after[k]:.3f}" for k in keys)
        kl = ", ".join(f"{k.split('/')[1]} {before[k]:.3f}->{after[k]:.3f}" for k in after if k not in keys)
        print(f"held-out teacher-token log-prob {logp}; KL(teacher || student) {kl}")
        gain = ", ".join(f"{k.split('/')[1]} {after[k] - before[k]:+.3f}" for k in keys)
        return run.publish(
            out / "model",
            summary_out=cfg.summary_out,
            metric="held-out teacher-token logp gain",
            value=f"{gain} (v{{version}})",
            backend=cfg.loss,
            data_hashes={"teacher_data": dhash},
            description="Clip-Forward-KL student of the three experts (`make stage2`).",
        )


def train_student(cfg: Stage2Config, init_dir: Path, train_recs: dict, held: dict, out: Path):
    """The loop: mixture-weighted batches -> Clip-FKL (or FKL) -> AdamW; metrics and the held-out
    eval go to the active MLflow run. Returns (model, eval before, eval after)."""
    import mlflow
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32).train()
    freeze_below(model, cfg.trainable_layers)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    rng = random.Random(cfg.seed)
    weights = [cfg.mixture[d] if train_recs[d] else 0.0 for d in DOMAINS]
    loss_fn = clip_forward_kl_loss if cfg.loss == "clip_fkl" else _fkl
    history = []
    before = evaluate(model, held, cfg.chunk_size)
    mlflow.log_metrics(before, step=0)
    for step in range(1, cfg.steps + 1):
        domains = rng.choices(DOMAINS, weights=weights, k=cfg.batch_size)  # mixture weights per sample
        batch = [rng.choice(train_recs[d]) for d in domains]
        logp, teacher, mask = student_logprobs(model, batch, cfg.chunk_size)
        loss, stats = loss_fn(logp, teacher, mask, norm=cfg.norm)
        optim.zero_grad()
        loss.backward()
        optim.step()
        metrics = {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}}
        with torch.no_grad():  # per-domain loss of this batch's samples
            for d in set(domains):
                rows = [i for i, x in enumerate(domains) if x == d]
                metrics[f"loss/{d}"] = float(loss_fn(logp[rows], teacher[rows], mask[rows], norm=cfg.norm)[0])
        mlflow.log_metrics(metrics, step=step)
        history.append({"step": step, **metrics})
    after = evaluate(model, held, cfg.chunk_size)
    mlflow.log_metrics(after, step=cfg.steps)
    (out / "history.json").write_text(
        json.dumps({"history": history, "eval_before": before, "eval_after": after}, indent=2)
    )
    mlflow.log_artifact(str(out / "history.json"))
    return model, before, after


def _fkl(logp, teacher, mask, norm):
    """Forward KL on teacher samples = NLL of the teacher's tokens (the teacher's log-probs unused)."""
    return forward_kl_nll_loss(logp, mask, norm=norm)
