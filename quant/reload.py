"""Verified reload of a W4A16 compressed-tensors checkpoint into transformers' fused Qwen3-MoE.

    from quant.reload import load_w4, verify_against
    model, accounting = load_w4("outputs/quant/<hash>/w4")        # dequantized weights, every key checked
    verify_against(model, bf16_model, token_ids, kl_tolerance=0.05)   # raises ReloadError when off

The pitfall this exists for: transformers 5.10 keeps Qwen3-MoE experts fused
(`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]) while llm-compressor
writes one tensor set per expert and projection (`mlp.experts.<e>.gate_proj.weight_packed`, ...).
`AutoModelForCausalLM.from_pretrained` on such a checkpoint reports the fused tensors MISSING and the
packed ones UNEXPECTED, re-initialises the experts at random and still returns a model that
generates. Here instead:

1. every safetensors file is read and dequantized with compressed-tensors' own decompressor
   (`CompressedTensorsDequantizer`: int4 unpacked from int32, times the group's scale), which also
   validates that each quantized module has exactly its packed/scale/shape tensors;
2. per-expert weights are stacked back into the fused layout: gate_up_proj[e] = [gate_e; up_e]
   (gate rows first, as transformers' forward chunks it), down_proj[e] = down_e;
3. the result is loaded into a model built from the config with strict key accounting: every
   checkpoint tensor must land on a parameter and every parameter must come from the checkpoint
   (a tied lm_head counts as provided by the embedding), else ReloadError lists the keys;
4. `check_weights` compares every weight with the BF16 model: router, embeddings and norms must be
   bit-identical, quantized ones within a relative error that 4-bit rounding meets (~0.1) and a
   re-initialised tensor does not (~1.4). Logits alone cannot catch the pitfall on a tiny random
   model (its experts barely move the output); `verify_against` then bounds the next-token KL.

Memory: this loads the dequantized model on CPU (2 bytes per parameter), fine for checking tiny and
small models; the real 235B checkpoint is served by vLLM, which reads the compressed tensors directly.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_EXPERT = re.compile(
    r"^(?P<prefix>.*\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$"
)


class ReloadError(RuntimeError):
    """A quantized checkpoint that does not load back completely or does not match the BF16 model."""


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in a checkpoint directory (duplicates are an error)."""
    from safetensors.torch import load_file

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ReloadError(f"no *.safetensors in {path}; is it a model directory?")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f))
        dup = tensors.keys() & part.keys()
        if dup:
            raise ReloadError(f"{f.name} repeats tensors of another shard: {sorted(dup)[:5]}")
        tensors |= part
    return tensors


def dequantize_checkpoint(path: str | Path, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """name -> tensor with each quantized Linear's packed tensors replaced by its dequantized
    `weight` (compressed-tensors' decompressor; validates the packed tensor sets first)."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
        CompressedTensorsDequantizer,
    )

    try:
        deq = CompressedTensorsDequantizer(str(path), dtype=dtype)
    except ValueError as e:
        raise ReloadError(f"{path} is not a compressed-tensors checkpoint: {e}") from e
    tensors = read_tensors(path)
    try:
        deq.validate(tensors)
    except ValueError as e:
        raise ReloadError(f"incomplete quantized module in {path}: {e}") from e
    return deq.process(tensors)


def fuse_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stack per-expert `experts.<e>.{gate,up,down}_proj.weight` into transformers' fused
    `experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I]; other tensors unchanged.
    Raises when a layer's expert indices are not 0..E-1 or a projection is missing for an expert."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, t in tensors.items():
        m = _EXPERT.match(name)
        if m is None:
            out[name] = t
            continue
        groups.setdefault(m["prefix"], {}).setdefault(m["proj"], {})[int(m["e"])] = t
    for prefix, projs in groups.items():
        n = max(max(p) for p in projs.values()) + 1
        for proj in ("gate_proj", "up_proj", "down_proj"):
            have = sorted(projs.get(proj, {}))
            if have != list(range(n)):
                raise ReloadError(f"{prefix}: {proj} present for experts {have}, expected 0..{n - 1}")
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([projs["gate_proj"][e], projs["up_proj"][e]], dim=0) for e in range(n)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([projs["down_proj"][e] for e in range(n)])
    return out


def _tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """alias -> primary name for parameters stored once under two names (tied lm_head)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def load_w4(path: str | Path, dtype: torch.dtype = torch.bfloat16):
    """(model with the dequantized W4 weights, accounting dict). Raises ReloadError unless every
    checkpoint tensor is used and every model weight is provided (tied aliases excepted)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    qcfg = getattr(config, "quantization_config", None)
    if not qcfg:
        raise ReloadError(f"{path} has no quantization_config; load it with AutoModelForCausalLM instead")
    del config.quantization_config  # build a plain model; the weights below are already dequantized
    raw = read_tensors(path)
    tensors = fuse_experts(dequantize_checkpoint(path, dtype=dtype))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = model.state_dict()
    aliases = _tied_aliases(model)
    missing = sorted(k for k in state if k not in tensors and aliases.get(k) not in tensors)
    unexpected = sorted(k for k in tensors if k not in state)
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(state[k].shape)}"
        for k in tensors.keys() & state.keys()
        if tensors[k].shape != state[k].shape
    )
    if missing or unexpected or wrong_shape:
        raise ReloadError(
            f"{path} does not map onto {type(model).__name__}: missing {missing[:8]} ({len(missing)}), "
            f"unexpected {unexpected[:8]} ({len(unexpected)}), shape mismatches {wrong_shape[:4]}"
        )
    for alias, primary in aliases.items():
        if alias in tensors and not torch.equal(tensors[alias], tensors[primary]):
            raise ReloadError(f"{alias} is tied to {primary} in the model but differs in the checkpoint")
    result = model.load_state_dict({k: v for k, v in tensors.items() if k in state}, strict=False)
    leftover = [k for k in result.missing_keys if aliases.get(k) is None]
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)
    packed = [k for k in raw if k.endswith(".weight_packed")]
    accounting = {
        "checkpoint_tensors": len(raw),
        "quantized_linears": len(packed),
        "experts_fused": sum(k.endswith("experts.gate_up_proj") for k in tensors),
        "dense_tensors": len(
            [k for k in raw if not re.search(r"\.weight_(packed|scale|shape|zero_point)$", k)]
        ),
        "model_weights": len(state),
        "tied_aliases": sorted(aliases),
    }
    return model.eval(), accounting


@torch.no_grad()
def weight_errors(reference, model) -> dict[str, float]:
    """Relative Frobenius error ||W - W_ref|| / ||W_ref|| of each of the BF16 `reference`'s weights in
    `model`, by name; a weight the model does not hold under that name gets inf."""
    have = dict(model.named_parameters())
    out = {}
    for name, r in reference.named_parameters():
        if name not in have or have[name].shape != r.shape:
            out[name] = float("inf")
            continue
        r = r.float()
        out[name] = float((have[name].float() - r).norm() / r.norm().clamp(min=1e-12))
    return out


def check_weights(reference, model, ignore_bf16: re.Pattern, rel_tolerance: float) -> dict[str, float]:
    """Unquantized weights (names matching `ignore_bf16`: router, embeddings, norms, lm_head) must
    equal the BF16 ones exactly; quantized ones must lie within `rel_tolerance` relative error (4-bit
    group quantization gives about 0.1; a re-initialised weight about 1.4). ReloadError otherwise."""
    errs = weight_errors(reference, model)
    absent = sorted(n for n, e in errs.items() if e == float("inf"))
    changed = sorted(n for n, e in errs.items() if ignore_bf16.search(n) and 0.0 < e < float("inf"))
    far = sorted(
        f"{n}: {e:.3f}"
        for n, e in errs.items()
        if not ignore_bf16.search(n) and rel_tolerance < e < float("inf")
    )
    if absent or changed or far:
        raise ReloadError(
            f"reloaded weights do not match the BF16 model: absent {absent[:6]} ({len(absent)}), "
            f"BF16 tensors changed {changed[:6]}, quantized tensors beyond relative error "
            f"{rel_tolerance}: {far[:6]} ({len(far)})"
        )
    q = [e for n, e in errs.items() if not ignore_bf16.search(n)]
    return {"weight_rel_err_mean": sum(q) / max(len(q), 1), "weight_rel_err_max": max(q, default=0.0)}


@torch.no_grad()
def verify_against(model, reference, samples: list[list[int]], kl_tolerance: float) -> dict[str, float]:
    """Next-token KL(BF16 || W4) and top-1 agreement over `samples`; ReloadError when the mean KL
    exceeds `kl_tolerance` (nats). Pass both in float32 (`load_w4(..., dtype=torch.float32)`,
    the BF16 model `.float()`): the values are the BF16/W4 ones, only the arithmetic is wider."""
    from quant.report import compare_models

    stats = compare_models(reference, model, samples)
    if not stats["kl_mean"] <= kl_tolerance:
        raise ReloadError(
            f"reloaded W4 model is far from the BF16 model: mean next-token KL {stats['kl_mean']:.4g} "
            f"> tolerance {kl_tolerance} (top-1 agreement {stats['top1_agreement']:.3f}); a reload that "
            "re-initialised weights looks like this. Check the checkpoint or raise eval.kl_tolerance"
        )
    return stats
