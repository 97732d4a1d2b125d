"""Export the draft in the EAGLE3 checkpoint layout that SGLang and vLLM load, and reload it.

    from draft_eagle3.export import export_draft, load_draft
    export_draft(draft, "out/draft", layer_ids="sglang", dtype="bfloat16", extra={...})
    draft = load_draft("out/draft", target)      # the target provides the (shared) embedding

Layout (ungated; what `LlamaForCausalLMEagle3` in SGLang and vLLM read):
  config.json  architectures ["LlamaForCausalLMEagle3"], model_type llama, one hidden layer, the
               Llama attention/MLP shape, vocab_size (target), draft_vocab_size, target_hidden_size,
               eagle_config.eagle_aux_hidden_state_layer_ids
  model.safetensors  fc.weight [H, 3H], midlayer.{input_layernorm, hidden_norm,
               post_attention_layernorm}.weight, midlayer.self_attn.{q,k,v,o}_proj.weight (q/k/v take
               2H inputs), midlayer.mlp.{gate,up,down}_proj.weight, norm.weight, lm_head.weight
               [N, H], d2t [N] int64, t2d [V] bool. No embedding: both engines share the target's.

Aux layer ids. SGLang reads eagle_aux_hidden_state_layer_ids as "output of layer i" (it captures
the input of layer i+1); vLLM reads the same field as "input of layer i". `layer_ids="sglang"`
(default) writes the output-of-layer ids we trained on; `layer_ids="vllm"` writes them + 1. Either
way `m3_eagle3.layer_id_convention` says which was written and `m3_eagle3.aux_layers_sglang` /
`aux_layers_vllm` give both lists, so the serve stage passes the right ids to each engine.

Gated variant: architecture "LlamaForCausalLMEagle3Gated" (no engine has it: serving it needs
our model class registered with the engine), gate tensor `midlayer.self_attn.attn_gate.weight`
[heads x head_dim, 2H]. The name avoids ".gate_proj", which both engines' stacked-parameter maps
(".gate_up_proj" <- ".gate_proj") would otherwise load into the MLP.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from draft_eagle3.model import DraftShape, Eagle3Draft

ARCH = {False: "LlamaForCausalLMEagle3", True: "LlamaForCausalLMEagle3Gated"}
GATE_TENSOR = "midlayer.self_attn.attn_gate.weight"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def aux_layer_ids(output_of_layer: list[int], engine: str) -> list[int]:
    """The eagle_aux_hidden_state_layer_ids an engine expects for hidden states that are the
    outputs of the given target layers: sglang the same ids, vllm ids + 1 (input of the next)."""
    if engine == "sglang":
        return list(output_of_layer)
    if engine == "vllm":
        return [i + 1 for i in output_of_layer]
    raise ValueError(f"layer_ids must be 'sglang' or 'vllm', got {engine!r}")


def export_config(s: DraftShape, layer_ids: str, dtype: str, extra: dict | None = None) -> dict:
    return {
        "architectures": [ARCH[s.gated]],
        "model_type": "llama",
        "hidden_size": s.hidden_size,
        "target_hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "num_attention_heads": s.num_attention_heads,
        "num_key_value_heads": s.num_key_value_heads,
        "head_dim": s.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": s.rms_norm_eps,
        "rope_theta": s.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": s.max_position_embeddings,
        "vocab_size": s.vocab_size,
        "draft_vocab_size": s.draft_vocab_size,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "eagle_config": {
            "eagle_aux_hidden_state_layer_ids": aux_layer_ids(list(s.aux_layers), layer_ids),
            "use_aux_hidden_state": True,
        },
        "m3_eagle3": {
            "layer_id_convention": {"sglang": "output_of_layer", "vllm": "input_of_layer"}[layer_ids],
            "aux_layers_sglang": aux_layer_ids(list(s.aux_layers), "sglang"),
            "aux_layers_vllm": aux_layer_ids(list(s.aux_layers), "vllm"),
            "gated": s.gated,
            "gate_tensor": GATE_TENSOR if s.gated else None,
            "gate": "Y * sigmoid(X W_g) before o_proj, X = cat(input_layernorm(embed), hidden_norm(h))",
            **(extra or {}),
        },
    }


def export_draft(draft: Eagle3Draft, out_dir: str | Path, layer_ids: str = "sglang", dtype: str = "bfloat16",
                 extra: dict | None = None) -> Path:  # fmt: skip
    """Write config.json + model.safetensors (module docstring) and return the directory."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in draft.state_dict().items():
        if name.startswith("embed_tokens."):
            continue  # the engines share the target's embedding
        t = t.detach().cpu()
        tensors[name] = (t.to(DTYPES[dtype]) if t.is_floating_point() else t).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = export_config(draft.s, layer_ids, dtype, extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def load_draft(draft_dir: str | Path, target, dtype: torch.dtype = torch.float32) -> Eagle3Draft:
    """Rebuild an exported draft; `target` (an HF causal LM) supplies the embedding."""
    from safetensors.torch import load_file

    d = Path(draft_dir)
    cfg = json.loads((d / "config.json").read_text())
    if cfg.get("architectures", [None])[0] not in ARCH.values() or "m3_eagle3" not in cfg:
        raise ValueError(f"{d} is not an m3 Eagle3 draft export (config.json architectures/m3_eagle3)")
    m3 = cfg["m3_eagle3"]
    s = DraftShape(
        hidden_size=cfg["hidden_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        draft_vocab_size=cfg["draft_vocab_size"],
        aux_layers=tuple(m3["aux_layers_sglang"]),
        gated=m3["gated"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"],
        max_position_embeddings=cfg["max_position_embeddings"],
    )
    draft = Eagle3Draft(s)
    state = load_file(str(d / "model.safetensors"))
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"embed_tokens.weight"}:
        raise ValueError(f"{d}: tensors do not match the draft (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        draft.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
    return draft.to(dtype)
