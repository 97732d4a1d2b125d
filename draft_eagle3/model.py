"""The Eagle3 draft model, with the optional Gated Attention unit of Baichuan-M3.

    from draft_eagle3.model import DraftShape, Eagle3Draft
    draft = Eagle3Draft(DraftShape.from_target(target.config, aux_layers, draft_ids, gated=True))
    draft.copy_target_weights(target, draft_ids)        # embedding (frozen) and lm_head rows
    h, logits, (k, v) = draft.step(ids_BT, hidden_BTx, pos_BT, past_kv, mask_TS)

Architecture (EAGLE-3; names match the SGLang/vLLM `LlamaForCausalLMEagle3` checkpoint layout):
    fc:        3H -> H, applied to the concatenated target hidden states of the three aux layers
               (steps after the first feed back the draft's own H-wide output and skip fc)
    midlayer:  one Llama decoder layer whose attention input is
                   X = cat(input_layernorm(embed(next token)), hidden_norm(h))      (2H wide)
               q/k/v project X (2H -> heads x head_dim), RoPE, causal attention, o_proj, residual h;
               then post_attention_layernorm -> SwiGLU MLP (H -> I -> H), residual
    norm, lm_head: final RMSNorm, H -> draft vocabulary (top-N target tokens; d2t maps back)
    embed_tokens: the target's embedding, copied and frozen (not exported: engines share it)

Gated Attention (`gated=True`, G1 position of Qiu et al. 2025, as in M3): with Y the attention output
per head and element (before o_proj) and X the normalized 2H layer input,
    Y' = Y * sigmoid(X W_g),    W_g: 2H -> heads x head_dim   (`midlayer.self_attn.attn_gate`)
Both variants run this one code path; the gate is the only difference, and its parameters are drawn
from a separate RNG stream so a gated and an ungated draft of the same seed share every other weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from draft_eagle3.data import vocab_maps


@dataclass(frozen=True)
class DraftShape:
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int  # the target's vocabulary (embedding rows, t2d length)
    draft_vocab_size: int
    aux_layers: tuple[int, ...]  # "output of layer i" ids of the target (SGLang convention)
    gated: bool = False
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960

    @classmethod
    def from_target(cls, tcfg, aux_layers, draft_vocab_size: int, gated: bool, **over) -> DraftShape:
        """Attention shape, norms and RoPE from the target's HF config; dense MLP width from its
        `intermediate_size` (a MoE target's dense width) unless overridden."""
        rope = getattr(tcfg, "rope_parameters", None) or {}
        kw = dict(
            hidden_size=tcfg.hidden_size,
            num_attention_heads=tcfg.num_attention_heads,
            num_key_value_heads=tcfg.num_key_value_heads,
            head_dim=getattr(tcfg, "head_dim", None) or tcfg.hidden_size // tcfg.num_attention_heads,
            intermediate_size=tcfg.intermediate_size,
            vocab_size=tcfg.vocab_size,
            draft_vocab_size=draft_vocab_size,
            aux_layers=tuple(aux_layers),
            gated=gated,
            rms_norm_eps=tcfg.rms_norm_eps,
            rope_theta=float(rope.get("rope_theta", 1_000_000.0)),
            max_position_embeddings=tcfg.max_position_embeddings,
        )
        kw.update({k: v for k, v in over.items() if v is not None})
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aux_layers"] = list(self.aux_layers)
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(
    pos_BT: torch.Tensor, head_dim: int, theta: float, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama RoPE tables for integer positions: cos, sin of shape B x 1 x T x head_dim."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=pos_BT.device, dtype=torch.float32) / head_dim)
    ang = pos_BT.float()[..., None] * inv  # B x T x hd/2
    emb = torch.cat([ang, ang], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def gate_attention(y_BTD: torch.Tensor, x_BTX: torch.Tensor, w_g_DX: torch.Tensor) -> torch.Tensor:
    """Gated Attention (G1 position, Qiu et al. 2025; M3's draft):  Y' = Y * sigmoid(X W_g^T).

    y_BTD: attention output before o_proj, D = heads x head_dim; x_BTX: the normalized layer input
    (here the 2H concat); w_g_DX: the gate projection (nn.Linear weight layout, D x X). The gate is
    elementwise: one sigmoid per head and per element of the head.
    """
    return y_BTD * torch.sigmoid(x_BTX @ w_g_DX.T)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class DraftAttention(nn.Module):
    def __init__(self, s: DraftShape):
        super().__init__()
        self.s = s
        x_dim = 2 * s.hidden_size  # the concat input
        self.q_proj = nn.Linear(x_dim, s.num_attention_heads * s.head_dim, bias=False)
        self.k_proj = nn.Linear(x_dim, s.num_key_value_heads * s.head_dim, bias=False)
        self.v_proj = nn.Linear(x_dim, s.num_key_value_heads * s.head_dim, bias=False)
        self.o_proj = nn.Linear(s.num_attention_heads * s.head_dim, s.hidden_size, bias=False)
        self.attn_gate = None  # created by Eagle3Draft after the shared weights (separate RNG stream)

    def forward(self, x_BTX, cos, sin, past_kv=None, mask_TS=None):
        """x: B x T x 2H; past_kv: (k, v) B x kv_heads x S0 x hd or None; mask_TS: bool, True = attend,
        over the S = S0 + T keys (past first). Returns (out B x T x H, (k_new, v_new) of these T)."""
        B, T, _ = x_BTX.shape
        s = self.s
        q = self.q_proj(x_BTX).view(B, T, s.num_attention_heads, s.head_dim).transpose(1, 2)
        k = self.k_proj(x_BTX).view(B, T, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        v = self.v_proj(x_BTX).view(B, T, s.num_key_value_heads, s.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k_all, v_all = (
            (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 2), torch.cat([past_kv[1], v], 2))
        )
        rep = s.num_attention_heads // s.num_key_value_heads
        y = F.scaled_dot_product_attention(
            q, k_all.repeat_interleave(rep, 1), v_all.repeat_interleave(rep, 1), attn_mask=mask_TS
        )
        y = y.transpose(1, 2).reshape(B, T, s.num_attention_heads * s.head_dim)
        if self.attn_gate is not None:
            y = gate_attention(y, x_BTX, self.attn_gate.weight)
        return self.o_proj(y), (k, v)


class DraftMLP(nn.Module):
    def __init__(self, s: DraftShape):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftLayer(nn.Module):
    def __init__(self, s: DraftShape):
        super().__init__()
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.hidden_norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.self_attn = DraftAttention(s)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mlp = DraftMLP(s)


class Eagle3Draft(nn.Module):
    def __init__(self, s: DraftShape, seed: int = 0):
        super().__init__()
        self.s = s
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
            self.embed_tokens.weight.requires_grad_(False)  # the target's, frozen
            self.fc = nn.Linear(3 * s.hidden_size, s.hidden_size, bias=False)
            self.midlayer = DraftLayer(s)
            self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
            self.lm_head = nn.Linear(s.hidden_size, s.draft_vocab_size, bias=False)
            if s.gated:  # drawn after everything else: the shared weights match the ungated draft's
                torch.manual_seed(seed + 1_000_003)
                attn = self.midlayer.self_attn
                attn.attn_gate = nn.Linear(2 * s.hidden_size, s.num_attention_heads * s.head_dim, bias=False)
        # d2t[i] = target id of draft id i minus i; t2d[t] = target id t is in the draft vocabulary
        self.register_buffer("d2t", torch.zeros(s.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(s.vocab_size, dtype=torch.bool))

    def copy_target_weights(self, target, draft_ids: torch.Tensor, init_lm_head: bool = True) -> None:
        """Copy the target's input embedding (frozen) and set the draft vocabulary buffers; with
        `init_lm_head` start lm_head from the target's output rows of the draft tokens."""
        d2t, t2d = vocab_maps(draft_ids.cpu(), self.s.vocab_size)
        with torch.no_grad():
            self.embed_tokens.weight.copy_(target.get_input_embeddings().weight)
            self.d2t.copy_(d2t)
            self.t2d.copy_(t2d)
            if init_lm_head:
                w = target.get_output_embeddings().weight
                self.lm_head.weight.copy_(w[draft_ids.to(w.device)])

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def to_target_ids(self, draft_idx: torch.Tensor) -> torch.Tensor:
        return draft_idx + self.d2t[draft_idx]

    def step(self, ids_BT, hidden_BTx, pos_BT, past_kv=None, mask_TS=None):
        """One draft forward. hidden: B x T x 3H (target aux states; fc applied) or B x T x H (the
        draft's own previous output). Returns (h B x T x H pre-norm output that feeds the next step,
        logits B x T x draft_vocab, (k, v) of these T positions)."""
        if hidden_BTx.shape[-1] == 3 * self.s.hidden_size:
            hidden_BTx = self.fc(hidden_BTx)
        layer = self.midlayer
        emb = self.embed_tokens(ids_BT).to(hidden_BTx.dtype)
        x = torch.cat([layer.input_layernorm(emb), layer.hidden_norm(hidden_BTx)], dim=-1)
        cos, sin = rope_cos_sin(pos_BT, self.s.head_dim, self.s.rope_theta, x.dtype)
        attn, kv = layer.self_attn(x, cos, sin, past_kv, mask_TS)
        h = hidden_BTx + attn
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h, self.lm_head(self.norm(h)), kv
