"""Draft training data: the target answers prompts of the three domains itself, and its hidden
states are captured on the way.

    python -c "from draft_eagle3.data import default_aux_layers; print(default_aux_layers(94))"

Steps (SpecForge's recommendation: regenerate the responses with the target, so the draft learns
the distribution it will be verified against):
1. prompts: inquiry (the doctor's first turn of an AgentClinic case), healthcare (HealthBench-format
   conversations), general (constraint prompts of m3.data.prompts); `domain_prompts`.
2. responses: the target generates (greedy at temperature 0, else sampled); `generate_responses`.
3. draft vocabulary: the N most frequent target ids of the responses (N = min(config, distinct ids
   seen)), sorted by target id; d2t[i] = draft_ids[i] - i, t2d = bool mask over the target vocab.
4. capture: one target forward over prompt + response per sample; we keep the outputs of the three
   aux layers (B x T x 3H, concatenated low, mid, high), the final normed hidden state (T x H) and
   whether the target's greedy next token is in the draft vocabulary. The target's next-token
   logits restricted to the draft vocabulary are `last_hidden @ target_head.T` with target_head =
   the target's lm_head rows of the draft ids (N x H), recomputed per batch rather than stored
   (T x N floats per sample would dominate the file).
Everything goes into one safetensors file (`save_samples`, `load_samples`) whose hash is lineage.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch


def default_aux_layers(num_layers: int) -> list[int]:
    """SpecForge's "output of layer" ids [1, L//2-1, L-4], made strictly increasing for short models.

    L=94 -> [1, 46, 90]; L=8 -> [1, 3, 4]. For L=6 the formula gives [1, 2, 2] (the high layer
    collides with the mid one), so each id is pushed to at least previous + 1, capped at L-1:
    L=6 (the tiny preset) -> [1, 2, 3]; L=4 -> [1, 2, 3]; fewer than 4 layers is an error.
    """
    if num_layers < 4:
        raise ValueError(f"Eagle3 needs a target with at least 4 layers for 3 aux layers, got {num_layers}")
    ids = [1, num_layers // 2 - 1, num_layers - 4]
    out: list[int] = []
    for i in ids:
        out.append(max(i, out[-1] + 1) if out else i)
    if out[-1] > num_layers - 1:
        raise ValueError(f"cannot place 3 increasing aux layers in {num_layers} layers")
    return out


def check_aux_layers(ids: list[int], num_layers: int) -> list[int]:
    if len(ids) != 3 or any(not 0 <= i < num_layers for i in ids):
        raise ValueError(
            f"aux_layers must be 3 'output of layer' ids in [0, {num_layers - 1}], got {ids}; "
            f"leave it null for the default {default_aux_layers(num_layers)}"
        )
    return list(ids)


def vocab_maps(draft_ids: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d2t (draft id -> offset to the target id: target = i + d2t[i]) and t2d (bool over the target
    vocabulary) for sorted, distinct target ids `draft_ids`."""
    draft_ids = draft_ids.long()
    if draft_ids.numel() and not bool((draft_ids[1:] > draft_ids[:-1]).all()):
        raise ValueError("draft_ids must be strictly increasing target ids")
    d2t = draft_ids - torch.arange(draft_ids.numel())
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[draft_ids] = True
    return d2t, t2d


def build_draft_vocab(responses: list[list[int]], n: int, vocab_size: int) -> torch.Tensor:
    """The n most frequent target ids in the responses (ties: smaller id first), sorted by id."""
    counts = Counter(t for r in responses for t in r)
    if not counts:
        raise ValueError("no response tokens to build the draft vocabulary from")
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: min(n, len(counts))]
    ids = torch.tensor(sorted(t for t, _ in top), dtype=torch.long)
    if int(ids.max()) >= vocab_size:
        raise ValueError(f"response token id {int(ids.max())} outside the target vocabulary {vocab_size}")
    return ids


def domain_prompts(per_domain: int, offset: int = 0) -> list[tuple[str, list[dict]]]:
    """`per_domain` chat prompts of each domain, starting at index `offset` (held-out prompts use
    an offset past the training ones), interleaved by domain."""
    from m3.data.prompts import DOMAINS, domain_rows  # here: the prompt sources pull in the clinic

    rows = {d: domain_rows(d, per_domain, offset) for d in DOMAINS}
    return [(d, list(rows[d][i]["prompt"])) for i in range(per_domain) for d in DOMAINS]


def prompt_ids(tokenizer, messages: list[dict], max_prompt_tokens: int) -> list[int]:
    ids = list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)[
            "input_ids"
        ]
    )
    return ids[-max_prompt_tokens:]  # keep the end: the question and the generation prompt


@torch.no_grad()
def generate_responses(
    target, prompts: list[list[int]], max_new_tokens: int, temperature: float, seed: int, eos_ids
) -> list[list[int]]:
    """The target's own answers (greedy at temperature 0), eos dropped."""
    from draft_eagle3.speculative import greedy_generate, sample_generate

    out = []
    gen = torch.Generator().manual_seed(seed)
    for p in prompts:
        if temperature > 0:
            toks = sample_generate(target, p, max_new_tokens, temperature, gen, eos_ids)
        else:
            toks = greedy_generate(target, p, max_new_tokens, eos_ids).tokens
        out.append([t for t in toks if t not in eos_ids] or toks[:1])
    return out


@torch.no_grad()
def capture(target, prompt: list[int], response: list[int], aux_layers: list[int], t2d: torch.Tensor) -> dict:
    """One sample's tensors: input_ids (T), loss_mask (T; 1 where the token is a response token),
    aux (T x 3H, outputs of the aux layers; hidden_states[i + 1] is the output of layer i), last
    (T x H, the final normed state that the target's lm_head reads) and in_vocab (T; the target's
    greedy next token at each position is in the draft vocabulary)."""
    ids = torch.tensor([prompt + response], device=target.device)
    out = target.model(input_ids=ids, output_hidden_states=True)
    aux = torch.cat([out.hidden_states[i + 1] for i in aux_layers], dim=-1)[0]
    last = out.last_hidden_state[0]
    greedy = target.lm_head(last).argmax(-1).cpu()
    mask = torch.zeros(ids.shape[1], dtype=torch.bool)
    mask[len(prompt) :] = True
    return {
        "input_ids": ids[0].cpu(),
        "loss_mask": mask,
        "aux": aux.float().cpu().contiguous(),
        "last": last.float().cpu().contiguous(),
        "in_vocab": t2d[greedy],
    }


def save_samples(
    path: Path, samples: list[dict], draft_ids: torch.Tensor, target_head: torch.Tensor, meta: dict
):
    from safetensors.torch import save_file

    tensors = {f"{i}.{k}": v.contiguous() for i, s in enumerate(samples) for k, v in s.items()}
    tensors["draft_ids"], tensors["target_head"] = draft_ids, target_head.float().contiguous()
    meta = {**meta, "n_samples": len(samples)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"m3": json.dumps(meta, sort_keys=True)})


def load_samples(path: Path) -> tuple[list[dict], torch.Tensor, torch.Tensor, dict]:
    """(samples, draft_ids, target_head, meta) as written by save_samples."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["m3"])
        samples = [
            {k: f.get_tensor(f"{i}.{k}") for k in ("input_ids", "loss_mask", "aux", "last", "in_vocab")}
            for i in range(meta["n_samples"])
        ]
        return samples, f.get_tensor("draft_ids"), f.get_tensor("target_head"), meta


def collate(samples: list[dict], target_head: torch.Tensor, device="cpu") -> dict:
    """Right-padded batch: input_ids B x T, aux B x T x 3H, target_logits B x T x N (the target's
    logits over the draft vocabulary at each position), valid B x T (position t's next token is a
    response token whose target argmax is in the draft vocabulary: a training target)."""
    T = max(len(s["input_ids"]) for s in samples)
    B = len(samples)
    ids = torch.zeros((B, T), dtype=torch.long)  # right padding: never a training target, any valid id
    aux = torch.zeros(B, T, samples[0]["aux"].shape[-1])
    last = torch.zeros(B, T, samples[0]["last"].shape[-1])
    valid = torch.zeros(B, T, dtype=torch.bool)
    for b, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[b, :n], aux[b, :n], last[b, :n] = s["input_ids"], s["aux"], s["last"]
        # position t predicts token t+1: a target when token t+1 is a response token
        valid[b, : n - 1] = s["loss_mask"][1:n] & s["in_vocab"][: n - 1]
    head = target_head.to(device)
    return {
        "input_ids": ids.to(device),
        "aux": aux.to(device),
        "target_logits": last.to(device) @ head.T,
        "valid": valid.to(device),
    }
