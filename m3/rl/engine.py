"""The local engine: one CPU process standing in for verl + vLLM on the tiny models (scale=local).

It runs the SAME adapters as a cluster job, with no copy of their logic: rollouts come from the
"m3_consultation" agent loop (consultations) or the chat template (single-turn prompts) against
`LocalServer` serving the policy being trained; rewards from `m3.rl.rewards.compute_score`; advantages
from verl's estimator registry ("spar" for consultations, "grpo" otherwise); the policy loss from
verl's registry (`gspo` by default) with `agg_loss`; an optimizer step (AdamW, or SGD); checkpoints that resume.

    engine = LocalEngine(model_dir, LocalRLConfig(), out_dir)
    trajs = engine.rollout(rows)           # rows in the verl parquet schema (stage1_expert_rl.data)
    metrics = engine.update(trajs)         # one on-policy optimisation step
    engine.save(step)                      # out_dir/checkpoint: model + optimizer + step + rng

Why our own loop here: verl 0.9.1's trainers need CUDA devices and Ray (device detection says cuda even on CPU); on a laptop the point
is to exercise the pieces that are ours end to end on the same code path.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from m3.rl.seeds import mix_seed

os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")


@dataclass
class LocalRLConfig:
    group_size: int = 4  # rollouts per prompt (GRPO/SPAR group)
    lr: float = 1e-4
    max_new_tokens: int = 32  # per assistant turn
    max_response_length: int = 1024  # a whole consultation
    temperature: float = 1.0
    loss_mode: str = "gspo"  # verl policy loss (actor_rollout_ref.actor.policy_loss.loss_mode)
    loss_agg_mode: str = "seq-mean-token-mean"
    clip_ratio_low: float = 3e-4  # GSPO's sequence-ratio clip (verl's recommended defaults)
    clip_ratio_high: float = 4e-4
    grad_clip: float = 1.0
    seed: int = 0
    # adamw (verl's actor optimiser) | sgd. On a few hundred sampled tokens per step Adam's
    # per-coordinate normalisation turns a sparse, noisy on-policy gradient into a random walk; plain
    # SGD follows its expectation (stage 3 on the tiny models: see stage3_mopd/README.md)
    optimizer: str = "adamw"
    # spar | grpo | spar_global: the paper's ablation arms. grpo = plain GRPO on the unpenalized
    # global reward (verl's GRPO sums rm_scores, and SPAR's encoding sums to R_global, so the same
    # rollouts serve all three); spar_global = a global repetition penalty (the worst step's gamma on
    # every token, m3.rl.spar.global_penalty_gammas)
    consultation_estimator: str = "spar"
    # rollouts generated together by the local server (1: one at a time, the exact sequential path;
    # larger: left-padded batches, like vLLM's continuous batching; the real preset uses 16)
    rollout_batch: int = 1
    # every sampled request carries a seed mixed from (seed, step, prompt, sample[, turn])
    # (vLLM's per-request seed, m3.rl.seeds.mix_seed): runs with one seed draw the same samples
    # from the same weights whatever the batching, so the arms of an ablation are paired. false: one
    # server-wide generator, whose draws depend on the order requests reach it
    request_seeds: bool = True
    # None: every parameter trains; k: only the top k decoder layers and the final norm (the CPU size
    # of the real preset: backward stops at the first trainable layer, ~3x faster per step)
    trainable_layers: int | None = None
    # extra keyword arguments of the reward function, as verl's reward_kwargs (e.g. fact_aware: false)
    reward_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rollout_batch < 1:
            raise ValueError(f"rl.rollout_batch must be >= 1, got {self.rollout_batch}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"rl.trainable_layers must be >= 1 or null (all), got {self.trainable_layers}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"rl.optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.consultation_estimator not in ("spar", "grpo", "spar_global"):
            raise ValueError(
                f"rl.consultation_estimator must be spar, grpo or spar_global, got {self.consultation_estimator!r}"
            )


@dataclass
class Trajectory:
    uid: str  # group id: rollouts of the same prompt share it
    data_source: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]  # 1 = policy token
    rm_scores: list[float]  # verl's token-level rewards (SPAR-encoded for consultations)
    reward: float
    extra: dict  # the reward function's dict (score and its parts)
    fields: dict | None = None  # the agent loop's extra_fields (transcript, stage scores, steps)
    logprobs: list[float] | None = None  # the sampling policy's log-prob of each response token


class LocalEngine:
    def __init__(self, model_dir: str | Path, cfg: LocalRLConfig, out_dir: str | Path):
        torch.manual_seed(cfg.seed)
        self.cfg, self.out = cfg, Path(out_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        freeze_below(self.model, cfg.trainable_layers)
        self.optim = _optimizer(self.model, cfg)
        self.server = self._server(cfg.seed)
        self.step = 0
        self.score = True  # False: rollouts only (stage-2 teacher data), no reward calls
        ckpt = self.out / "checkpoint"
        if (ckpt / "state.json").is_file():  # resume: weights, optimizer, step, RNG
            self.model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
            freeze_below(self.model, cfg.trainable_layers)
            self.optim = _optimizer(self.model, cfg)
            self.optim.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
            state = json.loads((ckpt / "state.json").read_text())
            self.step = state["step"]
            torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
            self.server = self._server(cfg.seed + self.step)

    def _server(self, seed: int):
        from m3.rl.local_server import LocalServer

        return LocalServer(
            self.model,
            seed=seed,
            default_max_tokens=self.cfg.max_new_tokens,
            max_batch=self.cfg.rollout_batch,
        )

    # --- rollout -----------------------------------------------------------------------------
    async def _consultation(self, row: dict, temperature: float, seed: dict) -> Trajectory:
        from m3.rl.agent_loop import build_agent_loop

        loop = build_agent_loop(
            self.server,
            self.tokenizer,
            max_response_length=self.cfg.max_response_length,
            model_type=self.model.config.model_type,
        )
        extra = dict(row["extra_info"])
        extra.setdefault("max_turn_tokens", self.cfg.max_new_tokens)
        sampling = {
            "temperature": temperature,
            "top_p": 1.0,
            "top_k": -1,
            "repetition_penalty": 1.0,
            "logprobs": True,
            **seed,
        }
        out = await loop.run(
            sampling,
            raw_prompt=[],
            extra_info=extra,
            data_source=row["data_source"],
            index=0,
            global_steps=self.step + 1,
        )
        text = self.tokenizer.decode(out.response_ids, skip_special_tokens=True)
        score = await self._score(row, text, {**extra, **out.extra_fields})
        out.reward_score = float(score["score"])
        d = out.as_dict()
        return Trajectory(
            "",
            row["data_source"],
            list(out.prompt_ids),
            list(out.response_ids),
            list(out.response_mask),
            [float(x) for x in d["rm_scores"]],
            out.reward_score,
            score,
            out.extra_fields,
            [float(x) for x in (out.response_logprobs or [])],
        )

    async def _single_turn(self, row: dict, temperature: float, seed: dict) -> Trajectory:
        prompt_ids = list(
            self.tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, enable_thinking=False
            )["input_ids"]
        )
        out = await self.server.generate(
            uuid.uuid4().hex,
            prompt_ids=prompt_ids,
            sampling_params={
                "temperature": temperature,
                "max_tokens": self.cfg.max_new_tokens,
                "logprobs": True,
                **seed,
            },
        )
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        score = await self._score(row, text, row.get("extra_info") or {})
        n = len(out.token_ids)
        rm = [0.0] * n
        rm[-1] = float(score["score"])  # outcome reward at the last token, as verl writes it
        return Trajectory(
            "",
            row["data_source"],
            prompt_ids,
            list(out.token_ids),
            [1] * n,
            rm,
            float(score["score"]),
            score,
            None,
            list(out.log_probs or []),
        )

    async def _score(self, row: dict, text: str, extra_info: dict) -> dict:
        """The reward function's dict, as verl's reward loop would call it (no call when scoring is off)."""
        from m3.rl.rewards import compute_score

        if not self.score:
            return {"score": 0.0}
        gt = (row.get("reward_model") or {}).get("ground_truth")
        out = await compute_score(row["data_source"], text, gt, extra_info, **self.cfg.reward_kwargs)
        return out if isinstance(out, dict) else {"score": float(out)}

    def rollout(
        self, rows: list[dict], group_size: int | None = None, temperature: float | None = None
    ) -> list[Trajectory]:
        """`group_size` rollouts of every row (default: the config's), at `temperature` (default: the
        config's; 0 = greedy, for evaluation)."""
        group_size = self.cfg.group_size if group_size is None else group_size
        temperature = self.cfg.temperature if temperature is None else temperature

        async def one(row: dict, i: int, j: int) -> Trajectory:
            is_consultation = row.get("agent_name") == "m3_consultation"
            run = self._consultation if is_consultation else self._single_turn
            sampled = self.cfg.request_seeds and temperature > 0
            t = await run(
                row, temperature, {"seed": mix_seed(self.cfg.seed, self.step, i, j)} if sampled else {}
            )
            t.uid = f"{self.step}-{i}"
            return t

        async def run() -> list[Trajectory]:
            jobs = [(row, i, j) for i, row in enumerate(rows) for j in range(group_size)]
            if self.cfg.rollout_batch == 1:  # one at a time: the exact sequential path
                return [await one(*job) for job in jobs]
            return list(await asyncio.gather(*(one(*job) for job in jobs)))  # the server batches

        self.model.eval()
        return asyncio.run(run())

    def evaluate(self, rows: list[dict]) -> float:
        """Mean reward of the current policy on `rows`: one greedy rollout each (held-out prompts)."""
        was_scoring, self.score = self.score, True
        try:
            trajs = self.rollout(rows, group_size=1, temperature=0.0)
        finally:
            self.score = was_scoring
        return float(np.mean([t.reward for t in trajs]))

    # --- update --------------------------------------------------------------------------------
    def _log_probs(self, trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
        return response_logprobs(self.model, trajs)

    def update(self, trajs: list[Trajectory]) -> dict[str, float]:
        from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn
        from verl.workers.config import ActorConfig, PolicyLossConfig

        self.model.train()
        log_prob, mask = self._log_probs(trajs)
        adv = task_advantages(trajs, mask, self.cfg.consultation_estimator)
        actor = ActorConfig(  # the fields verl's policy losses read; the rest are worker settings
            strategy="fsdp",
            ppo_micro_batch_size_per_gpu=1,
            rollout_n=self.cfg.group_size,
            ppo_mini_batch_size=len(trajs),
            clip_ratio_low=self.cfg.clip_ratio_low,
            clip_ratio_high=self.cfg.clip_ratio_high,
            policy_loss=PolicyLossConfig(loss_mode=self.cfg.loss_mode),
        )
        loss_fn = get_policy_loss_fn(self.cfg.loss_mode)
        # on-policy, one update per batch: the behaviour policy is the current one (ratio 1)
        pg_loss, pg_metrics = loss_fn(
            old_log_prob=log_prob.detach(),
            log_prob=log_prob,
            advantages=adv,
            response_mask=mask,
            loss_agg_mode=self.cfg.loss_agg_mode,
            config=actor,
        )
        self.optim.zero_grad()
        pg_loss.backward()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.cfg.grad_clip)
        self.optim.step()
        self.step += 1
        entropy_proxy = -agg_loss(log_prob.detach(), mask, "token-mean")
        rewards = [t.reward for t in trajs]
        return {
            "reward_mean": float(np.mean(rewards)),
            "reward_std": float(np.std(rewards)),
            "pg_loss": float(pg_loss.detach()),
            "grad_norm": float(grad_norm),
            "adv_abs_mean": float((adv.abs() * mask).sum() / mask.sum().clamp(min=1)),
            "neg_logprob_mean": float(entropy_proxy),
            "response_tokens_mean": float(mask.sum(1).mean()),
            **{f"pg/{k}": float(v) for k, v in pg_metrics.items() if isinstance(v, (int, float))},
        }

    def export(self, path: str | Path) -> Path:
        """The trained model alone (safetensors + tokenizer), what the registry receives."""
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        return Path(path)

    def save(self) -> Path:
        """Checkpoint (atomically replaced): model, optimizer, step, RNG; `__init__` resumes from it."""
        tmp, final = self.out / "checkpoint.tmp", self.out / "checkpoint"
        tmp.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(tmp, safe_serialization=True)
        self.tokenizer.save_pretrained(tmp)
        torch.save(self.optim.state_dict(), tmp / "optimizer.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": self.step}))
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
        return final


def freeze_below(model, trainable_layers: int | None) -> None:
    """Only the top `trainable_layers` decoder layers and the final norm train (None: everything).
    Tied embeddings / lm_head stay frozen with the rest."""
    if trainable_layers is None:
        return
    layers = model.model.layers
    if trainable_layers > len(layers):
        raise ValueError(f"rl.trainable_layers={trainable_layers} but the model has {len(layers)} layers")
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)


def _optimizer(model, cfg: LocalRLConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    return torch.optim.AdamW(params, lr=cfg.lr)


def response_logprobs(model, trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(response token) of `model` for every trajectory and the response mask, right-padded (B, T).

    One forward per trajectory (no padding inside the model); gradients flow unless called under
    torch.no_grad (teachers, evaluation).
    """
    T = max(len(t.response_ids) for t in trajs)
    out = torch.zeros(len(trajs), T)
    mask = torch.zeros(len(trajs), T)
    for i, t in enumerate(trajs):
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        logits = model(ids).logits[0, len(t.prompt_ids) - 1 : -1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, len(t.prompt_ids) :, None])[:, 0]
        out[i, : len(lp)] = lp
        mask[i, : len(lp)] = torch.tensor(t.response_mask, dtype=torch.float32)
    return out, mask


def task_advantages(
    trajs: list[Trajectory], mask_BT: torch.Tensor, consultation_estimator: str = "spar"
) -> torch.Tensor:
    """Group-relative task advantages (B, T) from verl's estimator registry, per kind of rollout.

    Consultations (data_source m3_inquiry) get "spar" (step penalties from their rm_scores; "grpo" or
    "spar_global" for the ablation), the single-turn rows "grpo"; a batch may mix both (stage 3).
    """
    from omegaconf import OmegaConf
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    T = mask_BT.shape[1]
    rm = torch.zeros(len(trajs), T)
    for i, t in enumerate(trajs):
        rm[i, : len(t.rm_scores)] = torch.tensor(t.rm_scores)
    index = np.array([t.uid for t in trajs], dtype=object)
    consult = torch.tensor([t.data_source == "m3_inquiry" for t in trajs])
    adv = torch.zeros(len(trajs), T)
    for name, rows in ((consultation_estimator, consult), ("grpo", ~consult)):
        if bool(rows.any()):
            adv[rows], _ = get_adv_estimator_fn(name)(
                token_level_rewards=rm[rows],
                response_mask=mask_BT[rows],
                index=index[rows.numpy()],
                config=OmegaConf.create({"norm_adv_by_std_in_grpo": True}),
            )
    return adv
