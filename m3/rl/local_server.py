"""A small HF-backed generation server that stands in for verl's vLLM/SGLang server manager on CPU.

verl's agent loops call the policy token-in/token-out:

    out = await server_manager.generate(request_id, prompt_ids=[...], sampling_params={...})
    out.token_ids, out.log_probs          # verl.workers.rollout.replica.TokenOutput

`LocalServer` answers the same call with a transformers causal LM, so an agent loop runs end to end
without vLLM (tests, the tiny preset, the local training engine):

    from m3.rl.local_server import LocalServer
    server = LocalServer("/tmp/tiny", seed=0)             # a path or an already-built model
    out = server.generate_tokens([151644, 872, 198], {"temperature": 1.0, "max_tokens": 8, "logprobs": True})

Semantics follow verl's vLLM server (`verl.workers.rollout.vllm_rollout.vllm_async_server`):
- sampling_params: temperature (<= 1e-5 means greedy), top_p, top_k (<= 0 or -1 = off), max_tokens
  (or max_new_tokens; default `default_max_tokens`), logprobs (truthy -> log-probs returned, else
  None), stop_token_ids, ignore_eos, seed, repetition_penalty (only 1.0, what verl sends);
  any other key raises ValueError, so a typo is not silently ignored.
- generation stops after an EOS token (the model's generation_config eos ids, <|im_end|> = 151645
  for Qwen3) or a stop token, which IS included in token_ids, as vLLM returns it.
- log_probs are vLLM's default `processed_logprobs`: log-softmax of the logits after temperature,
  top-k and top-p, at the sampled token; under greedy decoding, of the raw logits.
- determinism: a request with `seed` draws from its own generator seeded with it (vLLM's per-request
  seed), alone or inside a batch: its tokens do not depend on what else is in flight or in which
  order requests arrive (what pairs the arms of an ablation; `m3.rl.seeds.mix_seed` derives such
  seeds); otherwise draws come from one server-wide generator seeded at construction, so a fixed sequence
  of calls gives fixed outputs.
- batching: with `max_batch` 1 (the default) requests run one at a time in a worker thread (a
  lock), so the event loop keeps serving the rest of the rollout (simulator, reward) meanwhile. With
  `max_batch` > 1, requests that arrive together (the concurrent rollouts of an agent-loop batch)
  are generated together: compatible requests (same sampling settings and stop tokens, all seeded or
  all unseeded) go through one left-padded `model.generate` call of up to `max_batch` rows, the way
  vLLM batches concurrent requests; each row keeps its own max_tokens (cut after the call). Greedy
  outputs equal the one-at-a-time ones up to float32 rounding of the padded batch.
- extra_fields carries global_steps / min_global_steps / max_global_steps = `self.global_steps`,
  like verl's LLMServerClient: the v1 trainer's staleness tags read them from the agent loop output.

Limits: text only (image/video/audio data raise ValueError), no prefix cache, no routed experts.
Run: `pytest tests/m3/rl/test_agent_loop.py`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList, PreTrainedModel
from verl.workers.rollout.replica import TokenOutput

from m3.model.batching import MicroBatcher

SAMPLING_EPS = 1e-5  # vLLM's threshold under which temperature means greedy
KNOWN_PARAMS = frozenset(
    {
        "temperature", "top_p", "top_k", "max_tokens", "max_new_tokens", "logprobs", "stop_token_ids",
        "ignore_eos", "seed", "repetition_penalty",
    }
)  # fmt: skip


@dataclass(frozen=True)
class GenerationRecord:
    """One answered request (kept when LocalServer(record=True)): what the server saw and returned."""

    request_id: str
    prompt_ids: list[int]
    token_ids: list[int]
    log_probs: list[float] | None
    sampling_params: dict[str, Any] = field(default_factory=dict)


def _filter_top_k_top_p(logits_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus top-p set to -inf (the most likely token always stays)."""
    if 0 < top_k < logits_V.numel():
        kth = torch.topk(logits_V, top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    if top_p < 1.0:
        sorted_V, order_V = torch.sort(logits_V, descending=True)
        cum_V = torch.softmax(sorted_V, dim=-1).cumsum(dim=-1)
        drop_V = cum_V - torch.softmax(sorted_V, dim=-1) >= top_p  # mass before the token already >= p
        drop_V[0] = False
        logits_V = logits_V.masked_fill(torch.zeros_like(drop_V).scatter(0, order_V, drop_V), float("-inf"))
    return logits_V


def _batch_key(params: dict[str, Any]) -> tuple:
    """Requests that may share one generate() call: same sampling settings and stop tokens, and
    seeded with seeded (each row its own generator) or unseeded with unseeded (the server's)."""
    return (
        float(params.get("temperature", 1.0)), float(params.get("top_p", 1.0)), int(params.get("top_k", -1) or -1),
        bool(params.get("ignore_eos", False)), tuple(sorted(params.get("stop_token_ids") or [])),
        params.get("seed") is not None,
    )  # fmt: skip


class _RowSampler(LogitsProcessor):
    """Samples each row of a batch from its own generator inside `model.generate` (run greedy).

    generate() draws every sampled row from one global RNG, so a row's tokens would depend on its
    batch. This processor applies temperature, top-k and top-p per row (`_filter_top_k_top_p`, as
    `generate_tokens` does), draws the row's token with the row's generator, records its processed
    log-prob, and leaves only that token finite, so generate's greedy pick returns it.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float, top_k: int, top_p: float):
        self.generators, self.temperature, self.top_k, self.top_p = generators, temperature, top_k, top_p
        self.log_probs: list[list[float]] = [[] for _ in generators]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        for i, gen in enumerate(self.generators):
            logits_V = _filter_top_k_top_p(scores[i].float().cpu() / self.temperature, self.top_k, self.top_p)
            logp_V = torch.log_softmax(logits_V, dim=-1)
            token = int(torch.multinomial(logp_V.exp(), 1, generator=gen))
            self.log_probs[i].append(float(logp_V[token]))
            out[i, token] = 0.0
        return out


class LocalServer:
    """`await server.generate(request_id, prompt_ids=..., sampling_params=...) -> TokenOutput` on a HF model."""

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        *,
        seed: int = 0,
        default_max_tokens: int = 512,
        eos_token_ids: list[int] | None = None,
        record: bool = False,
        max_batch: int = 1,
    ) -> None:
        if isinstance(model, str | Path):
            model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        self.model = model.eval()
        if eos_token_ids is None:
            eos = self.model.generation_config.eos_token_id
            eos_token_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if not eos_token_ids:
            raise ValueError("the model's generation_config has no eos_token_id: pass eos_token_ids=[...]")
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.default_max_tokens = default_max_tokens
        self.max_model_len = int(self.model.config.max_position_embeddings)
        self.global_steps = 0  # the weights version; a training engine bumps it after each update
        self.record = record
        self.history: list[GenerationRecord] = []
        self._generator = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        # requests arriving together share one generate() call when their sampling settings match
        self._batcher = (
            MicroBatcher(self._run_batch, max_batch, key=lambda item: _batch_key(item[1]))
            if max_batch > 1
            else None
        )
        pad = self.model.generation_config.pad_token_id
        self.pad_token_id = int(min(self.eos_token_ids) if pad is None else pad)

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        audio_data: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """verl's server-manager call; other keyword arguments (priority, mm kwargs) are accepted and unused."""
        if image_data is not None or video_data is not None or audio_data is not None:
            raise ValueError("LocalServer is text-only: drop image/video/audio data or use a vLLM rollout")
        if self._batcher is None:
            return await asyncio.to_thread(self.generate_tokens, prompt_ids, sampling_params, request_id)
        return await self._batcher.submit((list(prompt_ids), dict(sampling_params), request_id))

    def _run_batch(self, items: list[tuple[list[int], dict[str, Any], str]]) -> list[TokenOutput]:
        return self.generate_batch(
            [i[0] for i in items], items[0][1], [i[1] for i in items], [i[2] for i in items]
        )

    @torch.no_grad()
    def generate_batch(
        self,
        prompts: list[list[int]],
        sampling_params: dict[str, Any],
        row_params: list[dict[str, Any]] | None = None,
        request_ids: list[str] | None = None,
    ) -> list[TokenOutput]:
        """One left-padded `model.generate` over `prompts` with shared sampling settings; each row
        keeps its own max_tokens (`row_params`). Log-probs as vLLM's processed logprobs (module docstring)."""
        row_params = row_params or [sampling_params] * len(prompts)
        temperature, top_p, top_k, stop = self._check(sampling_params)
        caps = [self._max_tokens(p, rp) for p, rp in zip(prompts, row_params, strict=True)]
        width = max(map(len, prompts))
        device = next(self.model.parameters()).device
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        # per-request seeds: each row draws from its own generator (_RowSampler) and generate() runs
        # greedy on the one finite logit the sampler leaves; unseeded: generate() samples itself
        rows = None
        if temperature > SAMPLING_EPS and row_params[0].get("seed") is not None:
            gens = [torch.Generator().manual_seed(int(rp["seed"])) for rp in row_params]
            rows = _RowSampler(gens, temperature, top_k, top_p)
        sample = temperature > SAMPLING_EPS and rows is None
        with self._lock:
            # generate() draws from the global RNG: seed it from the server's generator (repeatable)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator)))
            out = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(caps),
                logits_processor=LogitsProcessorList([] if rows is None else [rows]),
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=top_p if sample else None,
                top_k=max(top_k, 0) if sample else None,  # 0 = off (None would mean generate's default, 50)
                # [] with ignore_eos: never stop early (None would mean the config's)
                eos_token_id=sorted(stop),
                pad_token_id=self.pad_token_id,
                return_dict_in_generate=True,
                output_scores=rows is None,
            )
            steps = self.global_steps
        new = out.sequences[:, width:]
        if rows is None:
            # the sampled token's log-prob per step, gathered step by step (stacking the full
            # [steps, batch, vocab] log-softmax first costs 400 MB at batch 32 x 64 steps x 49k vocab)
            log_probs = torch.stack(
                [
                    torch.log_softmax(sc.float(), dim=-1).gather(1, new[:, j, None])[:, 0]
                    for j, sc in enumerate(out.scores)
                ],
                dim=1,
            ).tolist()
        else:
            log_probs = rows.log_probs
        new = new.cpu()
        outputs = []
        for i, (cap, rp) in enumerate(zip(caps, row_params, strict=True)):
            tokens: list[int] = []
            for t in new[i, :cap].tolist():
                tokens.append(t)
                if t in stop:
                    break
            lps = log_probs[i][: len(tokens)]
            returned = lps if rp.get("logprobs") else None
            if self.record:
                rid = request_ids[i] if request_ids else ""
                self.history.append(GenerationRecord(rid, list(prompts[i]), tokens, returned, dict(rp)))
            outputs.append(
                TokenOutput(
                    token_ids=tokens,
                    log_probs=returned,
                    stop_reason="completed",
                    num_preempted=0,
                    extra_fields={
                        "global_steps": steps,
                        "min_global_steps": steps,
                        "max_global_steps": steps,
                    },
                )  # fmt: skip
            )
        return outputs

    def _check(self, sampling_params: dict[str, Any]) -> tuple[float, float, int, set[int]]:
        """Validate sampling_params; (temperature, top_p, top_k, stop token ids)."""
        unknown = set(sampling_params) - KNOWN_PARAMS
        if unknown:
            raise ValueError(
                f"unsupported sampling_params {sorted(unknown)}; LocalServer knows {sorted(KNOWN_PARAMS)}"
            )
        if float(sampling_params.get("repetition_penalty", 1.0)) != 1.0:
            raise ValueError(
                "LocalServer supports only repetition_penalty=1.0 (what verl's agent loops send)"
            )
        stop = set() if sampling_params.get("ignore_eos", False) else set(self.eos_token_ids)
        stop |= {int(t) for t in sampling_params.get("stop_token_ids") or []}
        temperature = float(sampling_params.get("temperature", 1.0))
        top_k = int(sampling_params.get("top_k", -1) or -1)
        return temperature, float(sampling_params.get("top_p", 1.0)), top_k, stop

    def _max_tokens(self, prompt_ids: list[int], sampling_params: dict[str, Any]) -> int:
        if not prompt_ids:
            raise ValueError("empty prompt_ids: render at least the chat template's generation prompt")
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room within max_position_embeddings="
                f"{self.max_model_len}; shorten the prompt or use a model with a longer context"
            )
        max_tokens = sampling_params.get("max_tokens", sampling_params.get("max_new_tokens"))
        max_tokens = min(room, self.default_max_tokens if max_tokens is None else int(max_tokens))
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1")
        return max_tokens

    @torch.no_grad()
    def generate_tokens(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str = ""
    ) -> TokenOutput:
        """Synchronous generation of one response (see the module docstring for the semantics)."""
        temperature, top_p, top_k, stop = self._check(sampling_params)
        max_tokens = self._max_tokens(prompt_ids, sampling_params)
        seed = sampling_params.get("seed")

        with self._lock:
            gen = self._generator if seed is None else torch.Generator().manual_seed(int(seed))
            device = next(self.model.parameters()).device
            step_input = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
            past = None
            token_ids: list[int] = []
            log_probs: list[float] = []
            for _ in range(max_tokens):
                # logits of the last position only: the prompt's (T, 151936) logits would dominate the prefill
                out = self.model(input_ids=step_input, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
                logits_V = out.logits[0, -1].float().cpu()
                if temperature <= SAMPLING_EPS:
                    logp_V = torch.log_softmax(logits_V, dim=-1)
                    token = int(torch.argmax(logp_V))
                else:
                    logp_V = torch.log_softmax(
                        _filter_top_k_top_p(logits_V / temperature, top_k, top_p), dim=-1
                    )
                    token = int(torch.multinomial(logp_V.exp(), 1, generator=gen))
                token_ids.append(token)
                log_probs.append(float(logp_V[token]))
                if token in stop:
                    break
                step_input = torch.tensor([[token]], dtype=torch.long, device=device)
            returned_logprobs = log_probs if sampling_params.get("logprobs") else None
            if self.record:  # under the lock: history lists requests in the order they were served
                self.history.append(
                    GenerationRecord(
                        request_id, list(prompt_ids), token_ids, returned_logprobs, dict(sampling_params)
                    )
                )
            steps = self.global_steps
        return TokenOutput(
            token_ids=token_ids,
            log_probs=returned_logprobs,
            stop_reason="completed",
            num_preempted=0,
            extra_fields={"global_steps": steps, "min_global_steps": steps, "max_global_steps": steps},
        )
