"""Train the Eagle3 draft against a registered target, gated and ungated side by side.

    make draft                                         # target models:/m3-mopd@candidate
    make draft TARGET=models:/m3-base@candidate ARGS="steps=50"
    python -m draft_eagle3 target=models:/m3-mopd@candidate steps=200 register=ungated

Config -> resolve the target -> data (the target answers the three domains' prompts; aux hidden
states, final states and the draft vocabulary; cached in the run directory, hash in the lineage) ->
two drafts from the same initial weights (the gated one adds only the gate) -> a plain loop: the
same batch for both, training-time-test loss (ttt.py), AdamW; per-step loss and TTT accuracy per
unroll step to MLflow (`gated/acc_3`, ...) -> acceptance length of the untrained, ungated and gated
drafts by reference speculative decoding on held-out prompts (speculative.py) -> export both (SGLang/
vLLM layout, export.py) -> register the `register` variant as `m3-draft` with lineage to the target.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from draft_eagle3 import data as D
from draft_eagle3.export import export_draft
from draft_eagle3.model import DraftShape, Eagle3Draft
from draft_eagle3.speculative import compare, greedy_generate
from draft_eagle3.ttt import unroll
from m3 import registry
from m3.config import REPO_ROOT, ModelConfig, TrackingConfig, log_config, register_schema
from m3.runs import RUN_LOCATION_KEYS, StageRun

VARIANTS = ("ungated", "gated")


@dataclass
class DraftArchConfig:
    """Draft layer shape; null = the target's (attention shape, dense `intermediate_size`)."""

    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    init_lm_head_from_target: bool = True  # start lm_head from the target's rows of the draft vocab


@dataclass
class DraftConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the preset: its registry alias
    target: str = "models:/m3-mopd@${model.alias}"
    aux_layers: list[int] | None = None  # "output of layer" ids; null = [1, L//2-1, L-4] made distinct
    draft_vocab_size: int = 32000  # capped by the number of distinct response tokens
    prompts_per_domain: int = 8
    heldout_per_domain: int = 2  # evaluation prompts (acceptance length), after the training ones
    max_prompt_tokens: int = 256
    max_new_tokens: int = 64  # response length of the data
    temperature: float = 0.0  # of the data responses; 0 = greedy (what the draft is evaluated on)
    ttt_steps: int = 7
    step_decay: float = 0.8
    steps: int = 100
    batch_size: int = 4
    lr: float = 3e-3
    grad_clip: float = 1.0
    register: str = "gated"  # which variant becomes m3-draft
    eval_k: int = 6  # draft tokens per verification (the M3 card serves 6 steps)
    eval_max_new_tokens: int = 48
    # tree drafting in the evaluation (SGLang's --speculative-eagle-topk / -num-draft-tokens): 1 =
    # chain of eval_k; > 1: a tree of depth eval_k whose eval_num_draft_tokens - 1 best nodes are verified
    eval_topk: int = 1
    eval_num_draft_tokens: int | None = None
    export_layer_ids: str = "sglang"  # sglang (output of layer i) | vllm (input of layer i)
    export_dtype: str = "bfloat16"
    device: str = "cpu"
    cpu_threads: int = 0  # 0 = torch's default; 1 is much faster on a shared 2-core machine
    draft: DraftArchConfig = field(default_factory=DraftArchConfig)
    out_dir: str | None = None
    summary_out: str | None = None
    seed: int = 0
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.register not in VARIANTS:
            raise ValueError(f"register must be one of {VARIANTS}, got {self.register!r}")
        if self.export_layer_ids not in ("sglang", "vllm"):
            raise ValueError(f"export_layer_ids must be 'sglang' or 'vllm', got {self.export_layer_ids!r}")
        if self.ttt_steps < 1 or self.eval_k < 1 or self.steps < 0:
            raise ValueError("ttt_steps and eval_k must be >= 1 and steps >= 0")
        if self.eval_topk < 1:
            raise ValueError(f"eval_topk must be >= 1, got {self.eval_topk}")


register_schema("draft_schema", DraftConfig)


def eos_ids(target) -> set[int]:
    eos = target.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def load_target(target_dir: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # float32: the verify forward (k+1 tokens) and the 1-token forward must pick the same argmax
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval().to(device)
    return target, AutoTokenizer.from_pretrained(target_dir)


def prompt_sets(cfg: DraftConfig, tok) -> tuple[list[list[int]], list[list[int]]]:
    """(training prompts, held-out evaluation prompts) as token ids."""
    train = D.domain_prompts(cfg.prompts_per_domain, 0)
    held = D.domain_prompts(cfg.heldout_per_domain, cfg.prompts_per_domain) if cfg.heldout_per_domain else []
    ids = lambda rows: [D.prompt_ids(tok, m, cfg.max_prompt_tokens) for _, m in rows]  # noqa: E731
    return ids(train), ids(held)


def prepare_data(cfg: DraftConfig, target, prompts: list[list[int]], path: Path):
    """Generate, build the vocabulary, capture; reuse the file when it exists. Returns
    (samples, draft_ids, target_head, aux_layers, data hash)."""
    if not path.is_file():
        L = target.config.num_hidden_layers
        aux = D.check_aux_layers(cfg.aux_layers, L) if cfg.aux_layers else D.default_aux_layers(L)
        responses = D.generate_responses(
            target, prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed, eos_ids(target)
        )
        draft_ids = D.build_draft_vocab(responses, cfg.draft_vocab_size, target.config.vocab_size)
        _, t2d = D.vocab_maps(draft_ids, target.config.vocab_size)
        samples = [D.capture(target, p, r, aux, t2d) for p, r in zip(prompts, responses, strict=True)]
        head = target.get_output_embeddings().weight[draft_ids.to(target.device)].detach().cpu()
        D.save_samples(path, samples, draft_ids, head, {"aux_layers": aux})
    samples, draft_ids, head, meta = D.load_samples(path)
    return samples, draft_ids, head, meta["aux_layers"], registry.data_hash(path)


def build_draft(
    cfg: DraftConfig, target, draft_ids: torch.Tensor, aux: list[int], gated: bool
) -> Eagle3Draft:
    a = cfg.draft
    shape = DraftShape.from_target(
        target.config, aux, int(draft_ids.numel()), gated,
        intermediate_size=a.intermediate_size, num_attention_heads=a.num_attention_heads,
        num_key_value_heads=a.num_key_value_heads, head_dim=a.head_dim,
    )  # fmt: skip
    draft = Eagle3Draft(shape, seed=cfg.seed)
    draft.copy_target_weights(target, draft_ids, init_lm_head=a.init_lm_head_from_target)
    return draft.to(cfg.device)


def train_side_by_side(
    cfg: DraftConfig, drafts: dict[str, Eagle3Draft], samples, head, log=None
) -> list[dict]:
    """The same batches and steps for every draft; returns per-step metrics (`<variant>/loss`, ...)."""
    rng = random.Random(cfg.seed)
    optims = {
        v: torch.optim.AdamW(d.trainable_parameters(), lr=cfg.lr, weight_decay=0.0) for v, d in drafts.items()
    }
    history = []
    for step in range(1, cfg.steps + 1):
        batch = D.collate(rng.sample(samples, min(cfg.batch_size, len(samples))), head, cfg.device)
        metrics: dict[str, float] = {}
        for v, draft in drafts.items():
            draft.train()
            loss, stats = unroll(draft, batch, cfg.ttt_steps, cfg.step_decay)
            optims[v].zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(draft.trainable_parameters(), cfg.grad_clip)
            optims[v].step()
            draft.eval()
            metrics[f"{v}/loss"] = float(loss.detach())
            metrics.update({f"{v}/{k}": x for k, x in stats.items() if not k.startswith("n_")})
        history.append({"step": step, **metrics})
        if log is not None:
            log(metrics, step=step)
    return history


def evaluate(cfg: DraftConfig, target, drafts: dict[str, Eagle3Draft], prompts: list[list[int]]) -> dict:
    """Acceptance length, per-position acceptance and wall-clock speedup of each draft; the plain
    greedy baseline is decoded once and shared."""
    eos = eos_ids(target)
    greedy_generate(target, prompts[0], 4, eos)  # warm-up
    plain = [greedy_generate(target, p, cfg.eval_max_new_tokens, eos) for p in prompts]
    return {
        v: compare(
            target,
            d,
            prompts,
            cfg.eval_k,
            cfg.eval_max_new_tokens,
            eos,
            plain=plain,
            topk=cfg.eval_topk,
            num_draft_tokens=cfg.eval_num_draft_tokens,
        )  # fmt: skip
        for v, d in drafts.items()
    }


def main(cfg: DraftConfig):
    import mlflow

    registry.setup(cfg.tracking.experiment)
    run = StageRun(
        "m3-draft", cfg, stage="draft", parents=[cfg.target], alias=cfg.model.alias,
        exclude=(*RUN_LOCATION_KEYS, "device", "cpu_threads"),
    )  # fmt: skip
    if (existing := run.up_to_date(cfg.summary_out, cfg.register)) is not None:
        return existing
    if cfg.heldout_per_domain < 1:
        raise ValueError(
            "heldout_per_domain must be >= 1: the acceptance length is measured on held-out prompts"
        )
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    out = Path(cfg.out_dir or REPO_ROOT / "outputs" / "draft" / run.config_hash)
    target, tok = load_target(registry.resolve(cfg.target), cfg.device)
    train_prompts, eval_prompts = prompt_sets(cfg, tok)
    samples, draft_ids, head, aux, dhash = prepare_data(
        cfg, target, train_prompts, out / "draft_data.safetensors"
    )
    torch.manual_seed(cfg.seed)
    drafts = {v: build_draft(cfg, target, draft_ids, aux, gated=v == "gated") for v in VARIANTS}
    untrained = copy.deepcopy(drafts[cfg.register])
    with mlflow.start_run(run_name=f"draft-{cfg.register}"):
        log_config(cfg)
        mlflow.set_tags({"m3.stage": "draft", "m3.data_hash": dhash, "m3.aux_layers": json.dumps(aux)})
        mlflow.log_metrics({"data/samples": len(samples), "data/draft_vocab": int(draft_ids.numel())})
        history = train_side_by_side(cfg, drafts, samples, head, log=mlflow.log_metrics)
        results = evaluate(cfg, target, {"untrained": untrained, **drafts}, eval_prompts)
        _log_and_export(cfg, drafts, results, history, out)
        acc = {v: results[v]["acceptance_length"] for v in results}
        other = next(v for v in VARIANTS if v != cfg.register)
        shown = ", ".join(f"{v} {a:.2f}" for v, a in acc.items())
        same = all(r["identical_outputs"] for r in results.values())
        print(f"acceptance length at k={cfg.eval_k}: {shown}; identical to greedy: {same}")
        value = (
            f"{acc[cfg.register]:.2f} ({other} {acc[other]:.2f}, untrained {acc['untrained']:.2f}; "
            f"k={cfg.eval_k}, v{{version}})"
        )
        return run.publish(
            out / f"draft-{cfg.register}",
            summary_out=cfg.summary_out,
            metric="acceptance length (tokens/target step)",
            value=value,
            backend=cfg.register,
            data_hashes={"draft_data": dhash},
            tags={"m3.draft_variant": cfg.register},
            description="Eagle3 draft (gated attention optional) of the target (`make draft`).",
        )


def _log_and_export(cfg: DraftConfig, drafts: dict, results: dict, history: list, out: Path) -> None:
    """Acceptance metrics to MLflow, results.json, both drafts exported (the unregistered one as an artifact)."""
    import mlflow

    for v, r in results.items():
        mlflow.log_metrics({f"eval/{v}/acceptance_length": r["acceptance_length"],
                            f"eval/{v}/speedup": r["speedup"],
                            **{f"eval/{v}/accept_pos_{i + 1}": x
                               for i, x in enumerate(r["per_position_acceptance"])}})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"eval": results, "history": history}, indent=2))
    mlflow.log_artifact(str(out / "results.json"))
    for v in VARIANTS:
        extra = {"target": registry.pin(cfg.target).uri, "ttt_steps": cfg.ttt_steps,
                 "acceptance_length": results[v]["acceptance_length"], "eval_k": cfg.eval_k}  # fmt: skip
        export_draft(drafts[v], out / f"draft-{v}", cfg.export_layer_ids, cfg.export_dtype, extra)
    other = next(v for v in VARIANTS if v != cfg.register)
    mlflow.log_artifacts(str(out / f"draft-{other}"), artifact_path=f"draft-{other}")
