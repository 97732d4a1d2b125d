"""Self-generated MoE calibration set and the expert-activation report (the paper's MoE fix).

    rows = calibration_prompts(n_per_domain=8, offset=0, seed=0)      # prompts from every domain
    path, digest = self_generate(model_dir, rows, out / "calibration.jsonl", max_new_tokens=64)
    counts = expert_activation(model, token_ids)                        # [layers, experts] tokens
    assert not uncovered_experts(counts, min_tokens=1)

Why self-generated: generic web text routes to few experts of a medical MoE, so GPTQ would see no
inputs for many experts. The BF16 model answering diverse prompts of its own domains (clinical
inquiry consultations, HealthBench conversations, general instruction following) produces text that
the router spreads over the experts it actually uses. The report counts, for every layer, the tokens
the router sends to each expert (top-k) during a forward pass over the calibration set; an expert
with fewer than `min_tokens` is uncovered (fatal when GPTQ runs on routed tokens only, reported
otherwise). Independently, GPTQ is run with llm-compressor's
`moe_calibrate_all_experts` so every expert's Hessian sees every token (routing still decides the
output); the report shows the calibration data are also in-distribution for each expert.

The set is written as JSON lines {"domain", "prompt_id", "messages"} (prompt + the model's answer)
and hashed with `m3.registry.data_hash`; the hash goes into the registered model's lineage.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from m3.data.prompts import DOMAINS, domain_of, domain_rows, row_id


def calibration_prompts(n_per_domain: int, offset: int = 0, seed: int = 0) -> list[dict]:
    """`n_per_domain` prompts of each domain, taken from position `offset` on (so a held-out slice
    with another offset never overlaps): {"domain", "prompt_id", "messages"} rows."""
    if n_per_domain < 1:
        raise ValueError(f"calibration needs at least one prompt per domain, got {n_per_domain}")
    try:
        rows = [r for d in DOMAINS for r in domain_rows(d, n_per_domain, offset, seed=seed)]
    except ValueError as e:
        raise ValueError(
            f"{e}; lower calibration.prompts_per_domain or calibration.heldout_per_domain"
        ) from e
    return [{"domain": domain_of(r), "prompt_id": row_id(r), "messages": r["prompt"]} for r in rows]


def self_generate(
    model_dir: str | Path,
    rows: list[dict],
    out_path: str | Path,
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    seed: int = 0,
) -> tuple[Path, str]:
    """Answer every prompt with the (unquantized) model itself, greedy; write the conversations as
    JSON lines and return (path, data hash). An existing file is reused: same config, same data."""
    from m3 import registry
    from m3.model.generate import HFChatGenerator

    out_path = Path(out_path)
    if not out_path.is_file():
        gen = HFChatGenerator(model_dir, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
        answers = gen.chat([r["messages"] for r in rows])
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            for r, a in zip(rows, answers, strict=True):
                messages = [*r["messages"], {"role": "assistant", "content": a.text}]
                f.write(json.dumps({**r, "messages": messages}, ensure_ascii=False, sort_keys=True) + "\n")
        tmp.replace(out_path)  # a killed run never leaves a half-written set behind
    return out_path, registry.data_hash(out_path)


def read_calibration(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def token_ids(tokenizer, rows: list[dict], max_seq_length: int) -> list[list[int]]:
    """Chat-template token ids of each conversation, truncated to `max_seq_length`."""
    out = []
    for r in rows:
        ids = tokenizer.apply_chat_template(r["messages"], tokenize=True)["input_ids"]  # BatchEncoding
        out.append(list(ids)[:max_seq_length])
    return out


@torch.no_grad()
def expert_activation(model, samples: list[list[int]]) -> torch.Tensor:
    """Tokens routed to each expert of each layer: counts [num_layers, num_experts] (int64).

    A forward hook on every router (`mlp.gate`, Qwen3MoeTopKRouter: returns logits, top-k weights,
    top-k indices) counts the top-k indices of each token; one sample at a time, so no padding
    token is ever counted.
    """
    cfg = model.config
    num_experts = getattr(cfg, "num_experts", 0) or 0  # dense configs (Llama) have no such field
    counts = torch.zeros(cfg.num_hidden_layers, num_experts, dtype=torch.long)
    if num_experts == 0:  # a dense model: no router, nothing to calibrate per expert
        return counts
    hooks = []
    for i, layer in enumerate(model.model.layers):

        def hook(_mod, _inp, out, i=i):
            idx = out[2]  # [tokens, top_k]
            counts[i] += torch.bincount(idx.reshape(-1).cpu(), minlength=cfg.num_experts)

        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    try:
        for ids in samples:
            model(input_ids=torch.tensor([ids], device=model.device))
    finally:
        for h in hooks:
            h.remove()
    return counts


def uncovered_experts(counts_LE: torch.Tensor, min_tokens: int = 1) -> list[tuple[int, int]]:
    """(layer, expert) pairs that received fewer than `min_tokens` calibration tokens."""
    return [(int(layer), int(e)) for layer, e in (counts_LE < min_tokens).nonzero().tolist()]


def activation_summary(counts_LE: torch.Tensor, min_tokens: int = 1) -> dict:
    """Numbers for the log: coverage, min/max tokens per expert, and the imbalance (max/mean)."""
    c = counts_LE.float()
    if c.numel() == 0:  # a dense model
        return {"experts": 0, "covered_fraction": 1.0, "min_tokens_per_expert": 0, "max_tokens_per_expert": 0,
                "max_over_mean": 0.0}  # fmt: skip
    return {
        "experts": int(c.numel()),
        "covered_fraction": float((counts_LE >= min_tokens).float().mean()),
        "min_tokens_per_expert": int(counts_LE.min()),
        "max_tokens_per_expert": int(counts_LE.max()),
        "max_over_mean": float(c.max() / c.mean().clamp(min=1e-9)),
    }
