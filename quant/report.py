"""Memory and quality report of a W4A16 checkpoint: pure size arithmetic and next-token metrics.

    from quant.report import qwen3_moe_shapes, w4_size
    real = w4_size(qwen3_moe_shapes(**QWEN3_235B_A22B), group_size=128)     # GB and ratio vs BF16
    python -m quant.report                                                  # prints the real-shape table

Size model (compressed-tensors `pack-quantized`, symmetric, what vLLM's Marlin kernels load):
a quantized weight W with last (input) dimension `in` and N = numel / in rows stores
    packed int4    bits * numel / 8                      bytes
    scales         N * ceil(in / g) * scale_bytes        bytes (one scale per group of g inputs;
                                                          symmetric: no zero point)
    weight_shape   16 bytes per quantized Linear (two int64) -- counted separately, negligible
Every other tensor (router `mlp.gate`, embeddings, lm_head, norms) stays `dense_bytes` (BF16 = 2)
per element.  bits per weight = 8 * total bytes / total parameters; ratio = W4 bytes / BF16 bytes.
With g = 128 and BF16 scales a quantized weight costs 4 + 16/128 = 4.125 bits; the paper's "about
4.25 bits" also counts a zero point per group (4 + 32/128).

Quality: perplexity = exp(mean NLL of the next token); KL(P_bf16 || P_w4) = sum_v p log(p / q),
averaged over positions (the direction that asks how much the W4 model loses of the BF16 one).
"""

from __future__ import annotations

import math
import re

import torch

# Qwen3-235B-A22B (Qwen/Qwen3-235B-A22B config.json; configs/model/qwen3_235b_a22b.yaml): 94 layers,
# every layer sparse, 128 experts (8 active) of width 1536, GQA 64 q / 4 kv heads of 128, untied
# embeddings. These give 235.09 B parameters and 470.19 GB in BF16, the card's 470.2 GB.
QWEN3_235B_A22B = dict(
    hidden=4096,
    layers=94,
    q_heads=64,
    kv_heads=4,
    head_dim=128,
    experts=128,
    moe_intermediate=1536,
    vocab=151936,
    tied=False,
)
# What is quantized: attention, routed experts (fused) and dense MLPs (a dense model such as the real
# preset's Llama, or dense layers of a MoE). What stays BF16 (the paper: router `mlp.gate`,
# embeddings, lm_head; norms are vectors, never quantized).
QUANTIZED = re.compile(
    r"\.(q_proj|k_proj|v_proj|o_proj)\.weight$|\.experts\.(gate_up_proj|down_proj)$"
    r"|\.mlp\.(gate_proj|up_proj|down_proj)\.weight$"
)


def qwen3_moe_shapes(
    *,
    hidden: int,
    layers: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    experts: int,
    moe_intermediate: int,
    vocab: int,
    tied: bool,
) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a Qwen3-MoE causal LM as transformers 5.10 holds them (experts fused:
    gate_up_proj [E, 2I, H], down_proj [E, H, I]; every layer sparse). A tied lm_head is listed once,
    as the embedding, because it is stored once."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (hidden,),
            f"{p}.post_attention_layernorm.weight": (hidden,),
            f"{p}.self_attn.q_proj.weight": (q_heads * head_dim, hidden),
            f"{p}.self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            f"{p}.self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            f"{p}.self_attn.o_proj.weight": (hidden, q_heads * head_dim),
            f"{p}.self_attn.q_norm.weight": (head_dim,),
            f"{p}.self_attn.k_norm.weight": (head_dim,),
            f"{p}.mlp.gate.weight": (experts, hidden),
            f"{p}.mlp.experts.gate_up_proj": (experts, 2 * moe_intermediate, hidden),
            f"{p}.mlp.experts.down_proj": (experts, hidden, moe_intermediate),
        }
    shapes["model.norm.weight"] = (hidden,)
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def w4_size(
    shapes: dict[str, tuple[int, ...]],
    *,
    group_size: int,
    bits: int = 4,
    scale_bytes: int = 2,
    dense_bytes: int = 2,
    quantized: re.Pattern = QUANTIZED,
) -> dict[str, float]:
    """Bytes of the weights in BF16 and in W4A16 (formula in the module docstring).

    Returns params (total, quantized), bytes_bf16, bytes_w4 (packed + scales + dense tensors, the
    16-byte weight_shape records excluded), GB (1e9 bytes), ratio and bits_per_weight.
    """
    if group_size < 1 or bits < 1:
        raise ValueError(f"group_size and bits must be positive, got {group_size}, {bits}")
    total = q_params = w4 = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        total += n
        if quantized.search(name):
            rows, cols = n // shape[-1], shape[-1]
            q_params += n
            w4 += bits * n / 8 + rows * math.ceil(cols / group_size) * scale_bytes
        else:
            w4 += n * dense_bytes
    bf16 = total * dense_bytes
    return {
        "params": total,
        "params_quantized": q_params,
        "bytes_bf16": bf16,
        "bytes_w4": w4,
        "gb_bf16": bf16 / 1e9,
        "gb_w4": w4 / 1e9,
        "ratio": w4 / bf16,
        "bits_per_weight": 8 * w4 / total,
        "bits_per_quantized_weight": bits + 8 * scale_bytes / group_size,
    }


def model_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of a loaded model's parameters, each stored tensor once (tied weights once)."""
    return {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=True)}


def checkpoint_tensor_bytes(path) -> dict[str, int]:
    """Bytes of every tensor stored in the safetensors files of a checkpoint directory (header read
    only), for checking the formula against what was written."""
    from pathlib import Path

    from safetensors import safe_open

    sizes = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                s = st.get_slice(k)
                itemsize = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "I64": 8, "I8": 1, "U8": 1}[
                    s.get_dtype()
                ]
                sizes[k] = math.prod(s.get_shape()) * itemsize
    return sizes


# --- quality ---------------------------------------------------------------------------------------
def next_token_nll(logits_TV: torch.Tensor, ids_T: torch.Tensor) -> torch.Tensor:
    """NLL of token t+1 under the logits at position t: -log softmax(logits[t])[ids[t+1]], shape [T-1]."""
    logp = torch.log_softmax(logits_TV[:-1].float(), dim=-1)
    return -logp.gather(-1, ids_T[1:, None]).squeeze(-1)


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL) over all scored tokens."""
    return float(torch.exp(nll.float().mean()))


def next_token_kl(ref_logits_TV: torch.Tensor, q_logits_TV: torch.Tensor) -> torch.Tensor:
    """KL(P_ref || P_q) = sum_v p_v (log p_v - log q_v) per position, shape [T]."""
    logp = torch.log_softmax(ref_logits_TV.float(), dim=-1)
    logq = torch.log_softmax(q_logits_TV.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def compare_models(reference, model, samples: list[list[int]]) -> dict[str, float]:
    """Perplexity of both models, next-token KL(reference || model) and top-1 agreement over the
    token-id samples (one at a time, no padding); the max |logit difference| as a raw check."""
    nll_ref, nll_q, kl, agree, max_diff = [], [], [], [], 0.0
    for ids in samples:
        x = torch.tensor([ids])
        a = reference(input_ids=x).logits[0].float()
        b = model(input_ids=x).logits[0].float()
        nll_ref.append(next_token_nll(a, x[0]))
        nll_q.append(next_token_nll(b, x[0]))
        kl.append(next_token_kl(a, b))
        agree.append((a.argmax(-1) == b.argmax(-1)).float())
        max_diff = max(max_diff, float((a - b).abs().max()))
    kl_all = torch.cat(kl)
    return {
        "ppl_bf16": perplexity(torch.cat(nll_ref)),
        "ppl_w4": perplexity(torch.cat(nll_q)),
        "kl_mean": float(kl_all.mean()),
        "kl_max": float(kl_all.max()),
        "top1_agreement": float(torch.cat(agree).mean()),
        "max_abs_logit_diff": max_diff,
        "tokens": int(kl_all.numel()),
    }


def real_shape_table(group_sizes: tuple[int, ...] = (128, 64, 32)) -> str:
    """Markdown rows: the real Qwen3-235B-A22B in BF16 and W4A16 at several group sizes."""
    shapes = qwen3_moe_shapes(**QWEN3_235B_A22B)
    rows = [
        "| Qwen3-235B-A22B | params (B) | quantized (B) | GB | % of BF16 | bits/weight |",
        "|---" * 6 + "|",
    ]
    base = w4_size(shapes, group_size=128)
    rows.append(f"| BF16 | {base['params'] / 1e9:.2f} | - | {base['gb_bf16']:.1f} | 100 | 16 |")
    for g in group_sizes:
        s = w4_size(shapes, group_size=g)
        rows.append(
            f"| W4A16 g{g} | {s['params'] / 1e9:.2f} | {s['params_quantized'] / 1e9:.2f} | {s['gb_w4']:.1f} "
            f"| {100 * s['ratio']:.1f} | {s['bits_per_weight']:.3f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(real_shape_table())
