"""Tiny Qwen3-MoE factory: shape, forward/generate, save/reload equality, same seed same bytes."""

from __future__ import annotations

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from m3.cli import main as m3_main
from m3.model.tiny import build_tiny_model, tiny_config, write_tiny_checkpoint


def _digest(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def test_preset_shapes():
    cfg = tiny_config("tiny")
    assert cfg.model_type == "qwen3_moe" and cfg.vocab_size == 151936
    assert cfg.num_experts == 4 and cfg.num_experts_per_tok == 2
    n = sum(p.numel() for p in build_tiny_model("tiny").parameters())
    assert 3_000_000 < n < 8_000_000  # "a few million": the 151,936 x 32 embedding dominates
    with pytest.raises(ValueError, match="unknown preset"):
        tiny_config("huge")


def test_forward_generate_and_reload_equal(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "I have a headache."}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert logits.shape == (1, ids.shape[1], 151936) and torch.isfinite(logits).all()
    assert out.shape[1] > ids.shape[1]
    fresh = build_tiny_model("tiny", 0)
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, logits)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, tiny_dir):
    a = write_tiny_checkpoint(tmp_path / "a", "tiny", 0)
    assert _digest(a) == _digest(tiny_dir)
    assert m3_main(["tiny", "--out", str(tmp_path / "b"), "--seed", "1"]) == 0
    b = _digest(tmp_path / "b")
    assert b["model.safetensors"] != _digest(a)["model.safetensors"]
    assert b["tokenizer.json"] == _digest(a)["tokenizer.json"]
