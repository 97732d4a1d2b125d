"""The gated Eagle3 draft (M3's Gated Attention unit) as an out-of-tree vLLM model (vLLM 0.32).

Loaded inside vLLM's own environment (.venv-serve) through the `vllm.general_plugins` entry point
(pyproject.toml -> serve.vllm_plugin:register), never imported by the rest of the repo. Imports only
torch and vllm. Serve it like the ungated draft:

    make serve ENGINE=vllm MODEL=<target dir> DRAFT=<gated draft dir>
    # = --speculative-config '{"method": "eagle3", "model": DRAFT, "num_speculative_tokens": 3}'

Checkpoint: what draft_eagle3/export.py writes with gated=True: the ungated EAGLE3 layout plus
`midlayer.self_attn.attn_gate.weight` [heads x head_dim, 2H], architecture
`LlamaForCausalLMEagle3Gated`. vLLM looks the raw name up when it builds the draft's ModelConfig, then
rewrites it to `Eagle3LlamaForCausalLMEagle3Gated` (EAGLEConfig prefixes "Eagle3") and resolves the
class from that: both names are registered (serve/vllm_plugin.py).

Gate (G1 position of Qiu et al. 2025; draft_eagle3.model.gate_attention):
    Y' = Y * sigmoid(X W_g^T),   X = cat(input_layernorm(embed), hidden_norm(h))  (the 2H input of
    the midlayer's attention), Y = attention output per head and element, before o_proj.

How: the class subclasses vLLM's `Eagle3LlamaForCausalLM` (the proposer asserts isinstance on it and
we reuse its fc/d2t/lm_head logic); after its __init__ each draft layer's `LlamaAttention` instance is
retyped to `GatedLlamaAttention`, which only overrides `forward`, and gets an `attn_gate`
ColumnParallelLinear (sharded by heads like q, so it also holds under tensor parallelism). Building a
second attention module instead would register the same `model.layers.<L>.self_attn.attn` layer
name twice. The checkpoint name maps through vLLM's loader as midlayer. -> layers.0. untouched by the
stacked q/k/v and gate/up maps (it avoids ".gate_proj" on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.config import VllmConfig
from vllm.model_executor.layers.linear import ColumnParallelLinear
from vllm.model_executor.models.llama import LlamaAttention
from vllm.model_executor.models.llama_eagle3 import Eagle3LlamaForCausalLM

GATE = "attn_gate"  # checkpoint: midlayer.self_attn.attn_gate.weight


class GatedLlamaAttention(LlamaAttention):
    """LlamaAttention.forward (vllm/model_executor/models/llama.py) with the output gate before o_proj."""

    attn_gate: ColumnParallelLinear

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)  # hidden_states: the 2H concat X, [T, 2H]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        y = self.attn(q, k, v)  # [T, heads x head_dim] (this rank's heads), head-major like the gate rows
        y = y * torch.sigmoid(self.attn_gate(hidden_states))
        out, _ = self.o_proj(y)
        return out


class GatedEagle3LlamaForCausalLM(Eagle3LlamaForCausalLM):
    """Eagle3LlamaForCausalLM whose draft layers carry the attention output gate."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        for layer in self.model.layers:
            attn = layer.self_attn
            attn.__class__ = GatedLlamaAttention  # same instance and Attention layer; new forward
            attn.attn_gate = ColumnParallelLinear(
                attn.qkv_proj.input_size,  # 2H for the first (only) draft layer
                attn.total_num_heads * attn.head_dim,
                bias=False,
                gather_output=False,
                quant_config=None,
                prefix=attn.attn.layer_name.removesuffix(".attn") + f".{GATE}",
                return_bias=False,
            )

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # The parent returns None, so vLLM's loader does not check that every parameter was loaded:
        # count the gate tensors here so a checkpoint without them fails instead of serving garbage.
        seen: list[str] = []

        def tap(it):
            for name, w in it:
                if f".{GATE}." in name:
                    seen.append(name)
                yield name, w

        super().load_weights(tap(weights))
        if len(seen) != len(self.model.layers):
            raise ValueError(
                f"gated Eagle3 draft: expected {len(self.model.layers)} `{GATE}` tensor(s) "
                f"(midlayer.self_attn.{GATE}.weight), found {seen}; is this an ungated export?"
            )
