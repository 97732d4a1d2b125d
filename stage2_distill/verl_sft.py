"""Stage-2 student training on a cluster: verl's SFT trainer with the Clip-Forward-KL loss plugged in.

    ray job submit -- python3 -m stage2_distill.verl_sft [engine=megatron optim=megatron] <overrides>
    # the command `make stage2 SCALE=cluster` prints (ray_job_command); overrides are on verl's own
    # sft_trainer_engine config, so the job needs this package installed, not a copy of configs/

Why verl's SFT trainer (Ray variant, `verl.trainer.sft_trainer_ray`): stage 2 is supervised learning
on fixed teacher data, so no rollout, critic or reward machinery is needed; the SFT trainer runs the
same engines as RL (`engine=fsdp` with strategy fsdp2, or `engine=megatron` for the 235B MoE with
expert/pipeline parallelism) and calls a loss function per micro-batch, which is all our loss needs.
The Ray variant is launched like stage 1 and 3 (`ray job submit` from the head node); the torchrun
variant (`verl.trainer.sft_trainer`) has the same hook and would take the same loss and dataset.

What verl 0.9.1 lacks, and what we do instead (no patching of verl):
- No loss registry or config hook for SFT: `SFTTrainer._build_engine` hard-codes
  `partial(sft_loss, config=None)`. `DistillSFTTrainer` subclasses it, calls the parent, then sets our
  loss through the worker group's public `set_loss_fn` (the call verl itself makes).
- Extra per-token columns: supported. A custom dataset (`data.custom_cls`) may return more 1-D tensors;
  with `pad_mode: no_padding` verl's SFTTensorCollator turns each into a jagged nested tensor, and the
  micro-batching (dynamic or fixed) slices every key of the TensorDict, so `teacher_logprobs` reaches
  the loss aligned with `loss_mask` (tested on CPU through verl's collator and micro-batcher).
- Loss metrics: `fit()` logs the loss's metrics unreduced (one list per micro-batch and rank), which
  MLflow rejects, so on the cluster the loss returns none (like verl's sft_loss); the masked fraction
  is logged by the local loop only. `norm` must be `token` here: "active" and "sequence" need global
  counts of clipped tokens / sequences that verl does not all-reduce before the loss.

The loss has verl's SFT contract: `model_output["log_probs"]` is nested [bsz, j], position t holding
log pi_theta(x_{t+1} | x_<=t) (verl rolls input_ids by -1 on the packed stream), so the token masks are
rolled the same way; the result is normalised by the global teacher-token count times dp_size, as
`verl.workers.utils.losses.sft_loss` does (verl averages gradients over DP ranks).
"""

from __future__ import annotations

import copy
import random
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from m3.data.prompts import DOMAINS
from stage2_distill.losses import clip_forward_kl_loss, forward_kl_nll_loss

BASE = "sft_trainer_engine"  # verl's SFT entry config
CONFIGS = {"fsdp2": "stage2_sft", "megatron": "stage2_sft_megatron"}  # configs/verl/<name>.yaml
GROUPS = {"fsdp2": [], "megatron": ["engine=megatron", "optim=megatron"]}  # verl group choices
DATASET = ("pkg://stage2_distill.verl_sft", "TeacherRecordsDataset")
# top-level keys where a key verl's base lacks is fine: ours (data.*: read by our dataset) and the
# `_target_` nodes, whose keys are checked against their dataclasses instead
OPEN_KEYS = ("m3_distill", "data", "model", "engine", "optim", "checkpoint", "profiler")


# --- data -----------------------------------------------------------------------------------------
def mixture_indices(domains: list[str], weights: dict[str, float], seed: int) -> list[int]:
    """Record indices of one epoch with the domain mixture: n_d = round(N * w_d / W) samples of domain d.

    N = len(domains); W = sum of w_d over the domains present with w_d > 0 (others get none). Domain d's
    records are drawn without replacement in a seeded order, cycling when n_d exceeds its count, so
    equal weights over unequal domains up- and down-sample to equal shares, as the local loop's
    "domain by weight, then a record uniformly" does in expectation. Returned in a seeded shuffle.
    """
    unknown = set(weights) - set(DOMAINS)
    if unknown or any(w < 0 for w in weights.values()):
        raise ValueError(f"mixture weights need domains from {DOMAINS} and w >= 0, got {dict(weights)}")
    rng = random.Random(seed)
    by_domain = {d: [i for i, x in enumerate(domains) if x == d] for d in DOMAINS}
    live = {d: float(weights.get(d, 0.0)) for d in DOMAINS if by_domain[d] and weights.get(d, 0.0) > 0}
    if not live:
        raise ValueError(f"no records of a domain with positive weight: weights {dict(weights)}")
    total = sum(live.values())
    out = []
    for d, w in live.items():
        order = by_domain[d][:]
        rng.shuffle(order)
        n = round(len(domains) * w / total)
        out += [order[k % len(order)] for k in range(n)]
    rng.shuffle(out)
    return out


def sample_tensors(record: dict, max_length: int, truncation: str = "error") -> dict[str, torch.Tensor]:
    """One record as verl SFT tensors (no padding): input_ids = prompt + response, position_ids, and
    loss_mask / teacher_logprobs on the same positions (0 on the prompt)."""
    p, r = record["prompt_ids"], record["response_ids"]
    ids = p + r
    mask = [0] * len(p) + list(record["loss_mask"])
    teacher = [0.0] * len(p) + list(record["teacher_logprobs"])
    if len(ids) > max_length:
        if truncation != "right":
            raise ValueError(
                f"record {record.get('source_id')!r} has {len(ids)} tokens > data.max_length={max_length}: "
                "raise max_length (and max_token_len_per_gpu) or set data.truncation=right"
            )
        ids, mask, teacher = ids[:max_length], mask[:max_length], teacher[:max_length]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "position_ids": torch.arange(len(ids), dtype=torch.long),
        "loss_mask": torch.tensor(mask, dtype=torch.long),
        "teacher_logprobs": torch.tensor(teacher, dtype=torch.float32),
    }


class TeacherRecordsDataset(torch.utils.data.Dataset):
    """verl SFT dataset (`data.custom_cls`) over stage-2 record parquet files (stage2_distill.rollouts).

    Reads `data.pad_mode` (must be no_padding), `max_length`, `truncation` (error | right),
    `mixture` ({domain: weight}, default equal) and `mixture_seed`. Paths are local or on a shared FS.
    """

    def __init__(self, parquet_files, tokenizer=None, config=None, processor=None, max_samples: int = -1):
        from stage2_distill.records import read_records

        config = config or {}
        if config.get("pad_mode", "no_padding") != "no_padding":
            raise ValueError("TeacherRecordsDataset needs data.pad_mode=no_padding (verl's nested batches)")
        self.truncation = config.get("truncation", "error")
        if self.truncation not in ("error", "right"):
            raise ValueError("data.truncation must be error or right (left would cut the prompt)")
        self.max_length = int(config.get("max_length", 1024))
        files = [parquet_files] if isinstance(parquet_files, str | Path) else list(parquet_files)
        self.records = [r for f in files for r in read_records(Path(f))]
        if max_samples > 0:
            self.records = self.records[:max_samples]
        weights = dict(config.get("mixture") or {d: 1.0 for d in DOMAINS})
        self.index = mixture_indices(
            [r["domain"] for r in self.records], weights, int(config.get("mixture_seed", 0))
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return sample_tensors(self.records[self.index[i]], self.max_length, self.truncation)


# --- the loss ---------------------------------------------------------------------------------------
def distill_sft_loss(config, model_output, data, dp_group=None, *, loss: str = "clip_fkl"):
    """verl SFT loss_fn: Clip-FKL (or forward KL) on one micro-batch, normalised over the global batch.

    With packed positions t (verl NO_PADDING), logp_t = model_output["log_probs"] = log pi_theta(x_{t+1}),
    m_t = loss_mask[t+1], q_t = teacher_logprobs[t+1] (both rolled by -1 like verl's sft_loss), and
        clip_fkl:  L = sum_t m_t 1(sg[logp_t] < q_t) (-logp_t) / batch_num_tokens * dp_size
        fkl:       L = sum_t m_t (-logp_t) / batch_num_tokens * dp_size
    where batch_num_tokens = teacher tokens in the global batch (all micro-batches and DP ranks). Summed
    over micro-batches and averaged over ranks this is the `token` norm of stage2_distill.losses.
    A sequence's last position reads the next sequence's first token, a prompt token with mask 0.
    """
    from verl.utils import tensordict_utils as tu
    from verl.utils.dataset.dataset_utils import DatasetPadMode

    if tu.get_non_tensor_data(data=data, key="pad_mode", default=DatasetPadMode.NO_PADDING) != "no_padding":
        raise ValueError("distill_sft_loss needs data.pad_mode=no_padding")
    logp_1N = model_output["log_probs"].values()[None]
    mask_1N = torch.roll(data["loss_mask"].values(), shifts=-1, dims=0)[None]
    if loss == "clip_fkl":
        teacher_1N = torch.roll(data["teacher_logprobs"].values(), shifts=-1, dims=0)[None].to(logp_1N)
        mean, stats = clip_forward_kl_loss(logp_1N, teacher_1N, mask_1N, norm="token")
    elif loss == "fkl":
        mean, stats = forward_kl_nll_loss(logp_1N, mask_1N, norm="token")
    else:
        raise ValueError(f"m3_distill.loss must be clip_fkl or fkl, got {loss!r}")
    # mean = (masked sum) / (this micro-batch's teacher tokens): back to the sum, then verl's global scale
    return mean * stats["clip/teacher_tokens"] / data["batch_num_tokens"] * data["dp_size"], {}


# --- config: compose, validate, launch ---------------------------------------------------------------
def compose(backend: str = "fsdp2", overrides: list[str] | None = None) -> DictConfig:
    """configs/verl/stage2_sft[_megatron].yaml (verl's sft_trainer_engine + ours) with overrides."""
    from m3.rl.verl_config import compose_verl_config

    if backend not in CONFIGS:
        raise ValueError(f"cluster_backend must be one of {sorted(CONFIGS)}, got {backend!r}")
    return compose_verl_config(CONFIGS[backend], overrides)


def backend_of(cfg: DictConfig) -> str:
    return "megatron" if cfg.engine._target_.endswith("McoreEngineConfig") else "fsdp2"


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Raise ValueError unless verl's SFT trainer and our loss/dataset accept `cfg`; returns the
    dataclasses built as SFTTrainer._build_config builds them (model only if its config.json is local)."""
    from verl.utils import omega_conf_to_dataclass
    from verl.utils.import_utils import load_extern_object

    from m3.rl.verl_config import added_keys, compose_verl_base, unknown_fields

    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)
    errors = unknown_fields(cfg)
    base = OmegaConf.to_container(compose_verl_base(BASE, GROUPS[backend_of(cfg)]), resolve=False)
    ours = OmegaConf.to_container(cfg, resolve=False)
    errors += [
        f"{k}: verl's {BASE} has no such key"
        for k in added_keys(ours, base)
        if k.split(".")[0] not in OPEN_KEYS
    ]
    d = cfg.m3_distill
    if d.loss not in ("clip_fkl", "fkl"):
        errors.append(f"m3_distill.loss={d.loss!r}: use clip_fkl or fkl")
    if d.norm != "token":
        errors.append(f"m3_distill.norm={d.norm!r}: verl's SFT path supports only token (see verl_sft.py)")
    if (cfg.data.custom_cls.path, cfg.data.custom_cls.name) != DATASET:
        errors.append(f"data.custom_cls must be {DATASET} (the teacher-records dataset)")
    if cfg.data.pad_mode != "no_padding":
        errors.append("data.pad_mode must be no_padding")
    if cfg.data.truncation not in ("error", "right"):
        errors.append("data.truncation must be error or right")
    try:
        mixture_indices(list(cfg.data.mixture), dict(cfg.data.mixture), 0)
    except ValueError as e:
        errors.append(f"data.mixture: {e}")
    errors += _batch_errors(cfg)
    if errors:
        raise ValueError("stage-2 SFT config errors:\n  " + "\n  ".join(errors))
    load_extern_object(*DATASET)  # importable as verl will import it
    built = {}
    nodes = ["engine", "optim", "checkpoint", "profiler"]
    if (Path(str(cfg.model.path)) / "config.json").is_file():
        nodes.append("model")  # HFModelConfig loads the checkpoint's config and tokenizer
    for name in nodes:
        try:
            built[name] = omega_conf_to_dataclass(cfg[name])
        except Exception as e:  # hydra wraps the dataclass's own error: re-raise with the path
            raise ValueError(f"{name}: verl rejects this node: {e}") from e
    return built


def _batch_errors(cfg: DictConfig) -> list[str]:
    """The batch arithmetic verl checks only once the job runs on GPUs."""
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    e = cfg.engine
    if backend_of(cfg) == "megatron":
        model_par = e.tensor_model_parallel_size * e.pipeline_model_parallel_size * e.context_parallel_size
        expert_par = e.expert_model_parallel_size * (e.expert_tensor_parallel_size or 1)
        if world % (expert_par * e.pipeline_model_parallel_size):
            return [f"EP x ETP x PP = {expert_par * e.pipeline_model_parallel_size} must divide {world} GPUs"]
    else:
        model_par = e.ulysses_sequence_parallel_size
    if world % model_par:
        return [f"{world} GPUs are not a multiple of the model-parallel size {model_par}"]
    dp = world // model_par
    data = cfg.data
    if data.train_batch_size % dp:
        return [f"data.train_batch_size={data.train_batch_size} must be a multiple of the DP size {dp}"]
    if data.use_dynamic_bsz and data.max_token_len_per_gpu < data.max_length:
        return ["data.max_token_len_per_gpu must be >= data.max_length (the longest record fits)"]
    if not data.use_dynamic_bsz and (data.train_batch_size // dp) % data.micro_batch_size_per_gpu:
        return ["train_batch_size / DP must be a multiple of data.micro_batch_size_per_gpu"]
    return []


def hydra_overrides(cfg: DictConfig) -> list[str]:
    """verl group choices + the overrides that turn verl's sft_trainer_engine into `cfg`."""
    from m3.rl.verl_config import compose_verl_base, config_diff

    groups = GROUPS[backend_of(cfg)]
    base = OmegaConf.to_container(compose_verl_base(BASE, groups), resolve=False)
    return [*groups, *config_diff(OmegaConf.to_container(cfg, resolve=False), base, "")]


def ray_job_command(cfg: DictConfig, address: str | None = None) -> list[str]:
    """argv of `ray job submit [--address A] -- python3 -m stage2_distill.verl_sft <overrides>`."""
    head = ["ray", "job", "submit"] + (["--address", address] if address else [])
    return [*head, "--", "python3", "-m", "stage2_distill.verl_sft", *hydra_overrides(cfg)]


def run(cfg: DictConfig) -> None:
    """verl's Ray SFT trainer with our loss (what `verl.trainer.sft_trainer_ray.run_sft` does, plus it)."""
    import ray
    from verl.trainer.sft_trainer_ray import SFTTrainer
    from verl.utils.device import auto_set_device

    class DistillSFTTrainer(SFTTrainer):
        def _build_engine(self):
            super()._build_engine()  # builds the worker group with verl's sft_loss; replace it
            self.loss_fn = partial(distill_sft_loss, config=None, loss=self.config.m3_distill.loss)
            self.training_client.set_loss_fn(loss_fn=self.loss_fn)

    auto_set_device(cfg)
    ray.init()
    DistillSFTTrainer(config=cfg).fit()


def main(argv: list[str] | None = None) -> int:
    from m3.rl.verl_config import compose_verl_base

    cfg = compose_verl_base(BASE, list(sys.argv[1:] if argv is None else argv))
    validate(cfg)
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
