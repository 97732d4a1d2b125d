"""W4 quantization stage: self-generated calibration -> GPTQ W4A16 -> verified reload -> report -> m3-w4.

    make quant                                         # models:/m3-mopd@candidate -> m3-w4@candidate
    make quant MODEL=models:/m3-distill@candidate      # any registered model (or a directory)
    python -m quant source=/path/to/ckpt gptq.group_size=64 eval.healthbench_examples=0

Config -> resolve the model -> prompts of every domain answered by the model itself (saved, hashed)
-> expert-activation report over the calibration tokens (an expert the router never picks is
reported; fatal only without all-expert calibration) ->
llm-compressor GPTQ W4A16 (router, embeddings, lm_head BF16; all-expert calibration) ->
compressed-tensors checkpoint -> reload through quant.reload (every tensor accounted for, weights
checked against BF16, next-token KL bounded) -> memory (measured bytes, the formula, and the same
formula on the real Qwen3-235B-A22B shapes) and quality (held-out perplexity, KL, top-1 agreement,
a short HealthBench-sample run of both models) -> MLflow -> register `m3-w4` with lineage to the
source model, the calibration hash and the quantization config. A config already registered for
the same source version is skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from m3 import registry
from m3.config import REPO_ROOT, ModelConfig, TrackingConfig, log_config, register_schema
from m3.data.prompts import SOURCES
from m3.judges.config import JudgeConfig, simple_evals_judge
from m3.runs import StageRun
from quant import calibrate, report
from quant.gptq import GPTQConfig, run_gptq
from quant.reload import check_weights, load_w4, verify_against

# Tensors that stay BF16 (reload check: bit-identical): router, embeddings, lm_head, norms.
BF16_TENSORS = r"mlp\.gate\.weight$|embed_tokens|lm_head|norm\.weight$"
BACKEND = "llm-compressor GPTQ W4A16"


@dataclass
class CalibrationConfig:
    prompts_per_domain: int = 8  # inquiry, healthcare and general prompts each
    heldout_per_domain: int = 2  # the next prompts of each domain: held-out text for PPL / KL
    max_new_tokens: int = 64  # answer length of the self-generated responses
    max_seq_length: int = 1024
    min_tokens_per_expert: int = 1  # an expert routed fewer calibration tokens fails the run
    batch_size: int = 8
    seed: int = 0


@dataclass
class QuantEvalConfig:
    kl_tolerance: float = 0.05  # nats, mean next-token KL(BF16 || W4) the reload must stay under
    # per quantized tensor: 4-bit gives ~0.1 on random weights and up to 0.34 on a real model (SmolLM2
    # layer 11 down_proj, outlier columns); a re-initialised tensor gives ~1.4
    weight_rel_tolerance: float = 0.5
    healthbench_examples: int = 4  # HealthBench-sample records not used for calibration; 0 skips
    max_new_tokens: int = 64
    judge: JudgeConfig = field(default_factory=simple_evals_judge)  # HealthBench: simple-evals' grader


@dataclass
class QuantConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the preset: its registry alias
    # registry URI or a local checkpoint directory. Not called `model`: configs/model/ is a Hydra
    # group, so `model=...` on the command line selects the preset.
    source: str = "models:/m3-mopd@${model.alias}"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    eval: QuantEvalConfig = field(default_factory=QuantEvalConfig)
    register_name: str = "m3-w4"
    out_dir: str | None = None  # None: outputs/quant/<config hash>
    summary_out: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


register_schema("quant_schema", QuantConfig)


def healthbench_score(model_dir: Path, cfg: QuantConfig, offset: int, out: Path) -> dict:
    """Overall HealthBench score of a (BF16) checkpoint on sample records after `offset` (those not
    used for calibration), through eval.healthbench's generation, grading and scoring."""
    from eval.healthbench.run import GenerationConfig, HealthBenchRunConfig, generate_missing, grade_missing
    from eval.healthbench.scoring import score_graded
    from m3.data.healthbench import load_examples, load_graded

    examples = load_examples(str(SOURCES["healthcare"]))[offset : offset + cfg.eval.healthbench_examples]
    if len(examples) < cfg.eval.healthbench_examples:
        raise ValueError(
            f"only {len(examples)} HealthBench-sample records remain after the calibration ones; "
            "lower eval.healthbench_examples or calibration.prompts_per_domain"
        )
    hb = HealthBenchRunConfig(
        model=str(model_dir),
        generation=GenerationConfig(max_new_tokens=cfg.eval.max_new_tokens),
        judge=cfg.eval.judge,
        n_bootstrap=100,
    )
    out.mkdir(parents=True, exist_ok=True)
    completions = generate_missing(hb, examples, out / "completions.jsonl")
    failures = asyncio.run(grade_missing(hb, examples, completions, out / "graded.jsonl"))
    if failures:
        raise RuntimeError(f"HealthBench grading failed for {len(failures)} items: {failures[0]['error']}")
    metrics = score_graded(load_graded(out / "graded.jsonl"), n_resamples=hb.n_bootstrap, seed=0)
    return {"overall_score": float(metrics["overall_score"]), "n": len(examples)}


def size_report(w4_dir: Path, model, group: int, dtype: torch.dtype) -> dict:
    """Measured bytes of the written checkpoint vs the formula, for this model and for the real
    Qwen3-235B-A22B shapes at the paper's group size. `model` is this model as served (BF16 scales
    and unquantized tensors) against its BF16 size: the ratio every summary shows; `stored` is the
    formula at the dtype the checkpoint was written in (float32 for the real preset), which the
    measured bytes must equal."""
    shapes = report.model_shapes(model)
    nbytes = torch.finfo(dtype).bits // 8  # scales and unquantized tensors are stored in `dtype`
    stored = report.w4_size(shapes, group_size=group, scale_bytes=nbytes, dense_bytes=nbytes)
    measured = report.checkpoint_tensor_bytes(w4_dir)
    n_q = sum(k.endswith(".weight_packed") for k in measured)
    real = report.w4_size(report.qwen3_moe_shapes(**report.QWEN3_235B_A22B), group_size=128)
    return {
        "model": report.w4_size(shapes, group_size=group),
        "stored": stored,
        "measured_bytes": sum(measured.values()),
        "formula_bytes_with_shape_records": stored["bytes_w4"] + 16 * n_q,
        "qwen3_235b_a22b_g128": real,
    }


def main(cfg: QuantConfig):
    import mlflow

    registry.setup(cfg.tracking.experiment)
    parents = [cfg.source] if cfg.source.startswith("models:/") else []
    run = StageRun(cfg.register_name, cfg, stage="quant", parents=parents, alias=cfg.model.alias)
    if (existing := run.up_to_date(cfg.summary_out, BACKEND)) is not None:
        return existing
    model_dir = registry.resolve(cfg.source)
    out = Path(cfg.out_dir or REPO_ROOT / "outputs" / "quant" / run.config_hash)
    calib = calibration_set(cfg, model_dir, out)  # 1
    reference, activation, uncovered = activation_report(cfg, model_dir, calib, out)  # 2
    w4_dir, group = run_gptq(  # 3
        model_dir,
        calib["ids"],
        cfg.gptq,
        out / "w4",
        {"calibration_hash": calib["hash"], "source": cfg.source},
    )
    w4, accounting = load_w4(w4_dir, dtype=torch.float32)  # 4
    weights = check_weights(reference, w4, re.compile(BF16_TENSORS), cfg.eval.weight_rel_tolerance)
    quality = verify_against(w4, reference, calib["held_ids"], cfg.eval.kl_tolerance)
    sizes = size_report(w4_dir, w4, group, getattr(torch, cfg.gptq.dtype))  # 5
    hb = healthbench_pair(cfg, model_dir, w4_dir, calib["tokenizer"], out)
    result = {
        "group_size": group, "calibration_hash": calib["hash"], "calibration_samples": len(calib["ids"]),
        "calibration_tokens": sum(map(len, calib["ids"])), "activation": activation,
        "uncovered_experts": uncovered, "accounting": accounting, "weights": weights, "quality": quality,
        "sizes": sizes, **hb,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    real = sizes["qwen3_235b_a22b_g128"]
    with mlflow.start_run(run_name="quant-w4a16"):  # 6
        log_config(cfg)
        mlflow.set_tags(
            {"m3.stage": "quant", "m3.data_hash": calib["hash"], "m3.quant.group_size": str(group)}
        )
        mlflow.log_metrics(report_metrics(result))
        for name in ("report.json", "expert_activation.json", "calibration.jsonl"):
            mlflow.log_artifact(str(out / name))
        print(
            f"weights {100 * sizes['model']['ratio']:.1f}% of BF16 here (group {group}), "
            f"{100 * real['ratio']:.1f}% on Qwen3-235B-A22B shapes (g128); "
            f"KL {quality['kl_mean']:.2e}, PPL {quality['ppl_bf16']:.4g} -> {quality['ppl_w4']:.4g}"
        )
        return run.publish(
            w4_dir,
            summary_out=cfg.summary_out,
            metric="W4 bytes / BF16 bytes",
            value=(
                f"{100 * sizes['model']['ratio']:.1f}% here, {100 * real['ratio']:.1f}% at 235B g128; "
                f"KL {quality['kl_mean']:.1e}, top-1 {100 * quality['top1_agreement']:.1f}% (v{{version}})"
            ),
            backend=BACKEND,
            data_hashes={"calibration": calib["hash"]},
            tags={
                "m3.quant.scheme": cfg.gptq.scheme,
                "m3.quant.group_size": str(group),
                "m3.quant.format": "compressed-tensors pack-quantized",
                "m3.quant.ignore": json.dumps(list(cfg.gptq.ignore)),
            },
            description="GPTQ W4A16 (compressed-tensors) of the final model (`make quant`).",
        )


def calibration_set(cfg: QuantConfig, model_dir: Path, out: Path) -> dict:
    """1. Prompts of every domain answered by the model itself (saved, hashed) as token ids, and the
    held-out text: the prompts that follow, never answered."""
    from transformers import AutoTokenizer

    c = cfg.calibration
    rows = calibrate.calibration_prompts(c.prompts_per_domain, offset=0, seed=c.seed)
    calib_path, calib_hash = calibrate.self_generate(
        model_dir, rows, out / "calibration.jsonl", max_new_tokens=c.max_new_tokens, batch_size=c.batch_size
    )
    tok = AutoTokenizer.from_pretrained(model_dir)
    held = calibrate.calibration_prompts(c.heldout_per_domain, offset=c.prompts_per_domain, seed=c.seed)
    return {
        "hash": calib_hash,
        "tokenizer": tok,
        "ids": calibrate.token_ids(tok, calibrate.read_calibration(calib_path), c.max_seq_length),
        "held_ids": calibrate.token_ids(tok, held, c.max_seq_length),
    }


def activation_report(cfg: QuantConfig, model_dir: Path, calib: dict, out: Path):
    """2. The unquantized reference model and how many calibration tokens the router sent to each
    expert (dense models: no experts, nothing to report). Returns (reference, summary, uncovered)."""
    from transformers import AutoModelForCausalLM

    c = cfg.calibration
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, cfg.gptq.dtype))
    reference = reference.float().eval()
    counts = calibrate.expert_activation(reference, calib["ids"])
    activation = calibrate.activation_summary(counts, c.min_tokens_per_expert)
    (out / "expert_activation.json").write_text(
        json.dumps({"tokens_per_expert": counts.tolist(), **activation}, indent=2) + "\n"
    )
    uncovered = calibrate.uncovered_experts(counts, c.min_tokens_per_expert)
    if uncovered:
        msg = (
            f"{len(uncovered)} experts were routed fewer than {c.min_tokens_per_expert} calibration tokens "
            f"(layer, expert): {uncovered[:10]}"
        )
        if not cfg.gptq.moe_calibrate_all_experts:  # GPTQ would have no inputs for them at all
            raise ValueError(
                f"{msg}; raise calibration.prompts_per_domain or set gptq.moe_calibrate_all_experts"
            )
        # Their Hessians still see every token (all-expert calibration); the router just never picks
        # them on this data. Reported (report.json, MLflow), not fatal.
        print(f"quant: warning: {msg}; quantized from all-expert calibration")
    return reference, activation, uncovered


def healthbench_pair(cfg: QuantConfig, model_dir: Path, w4_dir: Path, tok, out: Path) -> dict:
    """5. A short HealthBench-sample run of the float model and of the W4 weights (dequantized, what
    W4A16 kernels multiply with), on records after the calibration ones; {} when switched off."""
    if cfg.eval.healthbench_examples <= 0:
        return {}
    deq = out / "w4_dequantized"
    load_w4(w4_dir, dtype=getattr(torch, cfg.gptq.dtype))[0].save_pretrained(deq)
    tok.save_pretrained(deq)
    offset = cfg.calibration.prompts_per_domain + cfg.calibration.heldout_per_domain
    return {
        "healthbench_bf16": healthbench_score(model_dir, cfg, offset, out / "healthbench_bf16"),
        "healthbench_w4": healthbench_score(deq, cfg, offset, out / "healthbench_w4"),
    }


def report_metrics(result: dict) -> dict[str, float]:
    """The flat MLflow metrics of a report.json."""
    sizes, activation, real = result["sizes"], result["activation"], result["sizes"]["qwen3_235b_a22b_g128"]
    hb = {k: v for k, v in result.items() if k.startswith("healthbench_")}
    return {
        "w4/ratio_vs_bf16": sizes["model"]["ratio"],
        "w4/bits_per_weight": sizes["model"]["bits_per_weight"],
        "w4/measured_bytes": sizes["measured_bytes"],
        "w4/real_235b_ratio_g128": real["ratio"],
        "w4/real_235b_gb_g128": real["gb_w4"],
        "w4/group_size": result["group_size"],
        "calib/covered_fraction": activation["covered_fraction"],
        "calib/min_tokens_per_expert": activation["min_tokens_per_expert"],
        "calib/uncovered_experts": len(result["uncovered_experts"]),
        **{f"quality/{k}": v for k, v in result["quality"].items()},
        **{f"weights/{k}": v for k, v in result["weights"].items()},
        **{f"{k}/overall_score": v["overall_score"] for k, v in hb.items()},
    }
