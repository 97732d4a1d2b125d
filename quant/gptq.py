"""GPTQ W4A16 with llm-compressor 0.13 `oneshot`: recipe, group size that fits, compressed output.

    from quant.gptq import GPTQConfig, run_gptq
    out, group = run_gptq(model_dir, token_ids, GPTQConfig(group_size=128), out_dir)

Recipe: `GPTQModifier` with the `W4A16` preset (int4 weights, symmetric, one scale per group of
`group_size` input columns, BF16 activations) on every `Linear`; `lm_head` and the routers
(`re:.*mlp\\.gate$`) ignored; embeddings are `Embedding`, never targeted, so they stay BF16 too.
GPTQ itself (llmcompressor/modifiers/gptq/gptq_quantize.py): H = 2 X X^T over the calibration
inputs of each Linear, damped by `dampening_frac` * mean(diag H), Cholesky of H^-1, columns
quantized in blocks of `block_size` with each column's error spread over the columns left.

MoE: after loading, `linearize_moe` turns transformers' fused experts
(`experts.gate_up_proj` [E, 2I, H]) into one Linear per expert and projection so GPTQ sees them,
and `moe_calibrate_all_experts` sends every calibration token through every expert (the routing
weights still decide the layer output). Calibration runs layer by layer (`sequential` pipeline over
`Qwen3MoeDecoderLayer`), so only one layer's activations are held at a time.

Output: a compressed-tensors `pack-quantized` checkpoint (int4 packed in int32 `weight_packed`,
`weight_scale` per group, `weight_shape`), the format vLLM loads on Marlin kernels (symmetric, 4
bit, group 32/64/128); experts are written per expert (`experts.<e>.gate_proj.weight_packed`).
Load it back with `quant.reload.load_w4`, not `AutoModelForCausalLM` (see reload.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class GPTQConfig:
    scheme: str = "W4A16"  # llm-compressor preset; its group size is replaced by `group_size`
    # Paper: 128. The tiny preset's widths are 32 (hidden, heads x head_dim, moe_intermediate), which
    # 128 does not divide: with shrink_group_to_fit the group becomes gcd(group_size, every width)
    # (32 on tiny; 128 on small and on Qwen3-235B-A22B) and the effective size is logged and stored.
    group_size: int = 128
    shrink_group_to_fit: bool = True
    ignore: list[str] = field(default_factory=lambda: ["lm_head", "re:.*mlp\\.gate$"])
    block_size: int = 128
    dampening_frac: float = 0.01
    actorder: str | None = "static"  # static | group | weight | None; static keeps Marlin's fast path
    moe_calibrate_all_experts: bool = True
    sequential_targets: list[str] | None = None  # None: the model's decoder layer class (one layer at a time)
    dtype: str = "bfloat16"  # the model is quantized from (and its scales stored in) this dtype

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"gptq.dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.group_size < 1:
            raise ValueError(f"gptq.group_size must be positive, got {self.group_size}")


def effective_group_size(requested: int, widths: list[int], shrink: bool) -> int:
    """The group size used: `requested` when it divides every input width, else (when allowed) the
    largest divisor of `requested` that divides them all, gcd(requested, *widths)."""
    bad = sorted({w for w in widths if w % requested})
    if not bad:
        return requested
    g = math.gcd(requested, *widths)
    if not shrink:
        raise ValueError(
            f"group_size {requested} does not divide the input widths {bad} of this model; "
            f"set gptq.group_size={g} (or gptq.shrink_group_to_fit=true)"
        )
    return g


def quantized_linears(model: torch.nn.Module, ignore: list[str]) -> dict[str, torch.nn.Linear]:
    """The Linear modules GPTQ will quantize (every Linear not matched by `ignore`)."""
    from compressed_tensors.utils.match import match_name

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not any(match_name(name, pat) for pat in ignore)
    }


def build_recipe(cfg: GPTQConfig, group_size: int):
    """A GPTQModifier for `cfg.scheme` with the given group size (config_groups form, so the group
    size is explicit in the recipe and in the checkpoint's quantization_config)."""
    from compressed_tensors.quantization import QuantizationStrategy, preset_name_to_scheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    scheme = preset_name_to_scheme(cfg.scheme, ["Linear"])
    if scheme.weights is None or scheme.weights.strategy != QuantizationStrategy.GROUP:
        raise ValueError(f"gptq.scheme {cfg.scheme!r} is not a group-wise weight scheme; use W4A16")
    scheme.weights.group_size = group_size
    return GPTQModifier(
        config_groups={"group_0": scheme},
        ignore=list(cfg.ignore),
        block_size=cfg.block_size,
        dampening_frac=cfg.dampening_frac,
        actorder=cfg.actorder,
    )


def run_gptq(
    model_dir: str | Path, samples: list[list[int]], cfg: GPTQConfig, out_dir: str | Path, meta: dict
) -> tuple[Path, int]:
    """Quantize the model at `model_dir` on the calibration token ids; write the compressed
    checkpoint, its tokenizer and `m3_quant.json` (config, effective group, `meta`) to `out_dir`."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import linearize_moe
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if not samples:
        raise ValueError("no calibration samples; check calibration.prompts_per_domain")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, cfg.dtype))
    # Per-expert Linears so GPTQ sees (and quantizes) each expert. `load_quantizable_moe` would do
    # this at load time, but its patching walks every transformers module and imports torchvision
    # (not installed here); linearizing after the load is the same conversion, done in memory.
    linearize_moe(model)
    widths = sorted({m.in_features for m in quantized_linears(model, cfg.ignore).values()})
    group = effective_group_size(cfg.group_size, widths, cfg.shrink_group_to_fit)
    if group != cfg.group_size:
        print(f"quant: group size {cfg.group_size} does not divide input widths {widths}; using {group}")
    data = Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    oneshot(
        model=model,
        dataset=data,
        recipe=build_recipe(cfg, group),
        num_calibration_samples=len(samples),
        max_seq_length=max(map(len, samples)),
        shuffle_calibration_samples=False,
        pipeline="sequential",
        sequential_targets=list(cfg.sequential_targets or [type(model.model.layers[0]).__name__]),
        moe_calibrate_all_experts=cfg.moe_calibrate_all_experts,
        output_dir=str(out_dir),
    )
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    info = {"scheme": cfg.scheme, "group_size": group, "requested_group_size": cfg.group_size}
    info |= {"ignore": list(cfg.ignore), "input_widths": widths, "dtype": cfg.dtype, **meta}
    (out_dir / "m3_quant.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir, group
