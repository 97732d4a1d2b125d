"""Tiny Qwen3-MoE checkpoints built offline, deterministic by seed.

The tiny presets run the same code path as the real Qwen3-235B-A22B (same architecture class,
same tokenizer, same vocabulary of 151,936), only smaller, so every stage can be tested on a laptop:

    m3 tiny --out /tmp/tiny --preset tiny --seed 0        # ~5M parameters, 4 experts, 2 active
    m3 tiny --out /tmp/small --preset small               # ~25M parameters, trains on CPU in minutes

The output is an ordinary HF directory (config.json, model.safetensors, tokenizer files) that
`AutoModelForCausalLM` / `AutoTokenizer` load offline. Same preset and seed give the same bytes.
Embeddings are tied to keep the vocabulary-sized matrix from dominating twice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from m3.model.tokenizer import EOS_TOKEN, MODEL_VOCAB_SIZE, save_qwen3_tokenizer


@dataclass(frozen=True)
class TinyPreset:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    max_position_embeddings: int = 4096


PRESETS: dict[str, TinyPreset] = {
    # 6 layers so the Eagle3 default aux layers [1, L//2-1, L-4] = [1, 2, 2] stay inside the model.
    "tiny": TinyPreset(32, 6, 4, 2, 8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "small": TinyPreset(128, 8, 8, 4, 16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128),
}


def tiny_config(preset: str) -> Qwen3MoeConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    return Qwen3MoeConfig(
        vocab_size=MODEL_VOCAB_SIZE,
        hidden_size=p.hidden_size,
        intermediate_size=4 * p.hidden_size,  # unused: every layer is sparse (decoder_sparse_step=1)
        moe_intermediate_size=p.moe_intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        head_dim=p.head_dim,
        num_experts=p.num_experts,
        num_experts_per_tok=p.num_experts_per_tok,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        max_position_embeddings=p.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=151645,
        pad_token_id=151643,
        dtype="float32",  # CPU training; real checkpoints are bf16
    )


def build_tiny_model(preset: str = "tiny", seed: int = 0) -> Qwen3MoeForCausalLM:
    cfg = tiny_config(preset)
    # Seed the global RNG only for the init, then restore it: callers' randomness is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3MoeForCausalLM(cfg)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    model.generation_config.bos_token_id = None
    return model.eval()


def write_tiny_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Write model (safetensors) + tokenizer + `m3_meta.json` to `out_dir` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(preset, seed)
    model.save_pretrained(out, safe_serialization=True)
    save_qwen3_tokenizer(out)
    meta = {"builder": "m3.model.tiny", "preset": preset, "seed": seed, "eos_token": EOS_TOKEN}
    meta["shape"] = asdict(PRESETS[preset])
    meta["num_parameters"] = sum(p.numel() for p in model.parameters())
    (out / "m3_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
