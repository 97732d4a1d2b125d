"""Chat generation with a local HF checkpoint (the local stand-in for a vLLM/SGLang endpoint).

    gen = HFChatGenerator("path/or/models:/m3-base@candidate", max_new_tokens=64)
    answers = gen.chat([[{"role": "user", "content": "I have a fever."}]])   # -> [ChatAnswer]

Batched, left-padded, greedy by default (temperature 0) so evaluations are repeatable. The Qwen3
chat template's `enable_thinking` is passed through; answers are split into reasoning and final
text on the think tags, as the `qwen3` reasoning parser of vLLM/SGLang does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from m3.text.reasoning import split_reasoning


@dataclass
class ChatAnswer:
    text: str  # the final answer (reasoning removed)
    reasoning: str
    completion_tokens: int


class HFChatGenerator:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        enable_thinking: bool = False,
        batch_size: int = 8,
        trust_remote_code: bool = False,
        seed: int = 0,
    ):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:  # e.g. a checkpoint without one: pad with eos, on the left
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code
        ).eval()
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.enable_thinking, self.batch_size, self.seed = enable_thinking, batch_size, seed

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )
        return list(out["input_ids"])

    @torch.no_grad()
    def chat(self, conversations: list[list[dict]]) -> list[ChatAnswer]:
        answers: list[ChatAnswer] = []
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, len(conversations), self.batch_size):
            prompts = [self._prompt_ids(c) for c in conversations[start : start + self.batch_size]]
            batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
            sample = self.temperature > 0
            # generate() draws from the global RNG: seed it from our generator for repeatable sampling
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            out = self.model.generate(
                **batch,
                max_new_tokens=self.max_new_tokens,
                do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=self.top_p if sample else None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            for row in out[:, batch["input_ids"].shape[1] :]:
                ids = [t for t in row.tolist() if t != self.tokenizer.pad_token_id]
                if ids and ids[-1] == self.tokenizer.eos_token_id:
                    ids = ids[:-1]
                reasoning, text = split_reasoning(self.tokenizer.decode(ids, skip_special_tokens=True))
                answers.append(ChatAnswer(text=text, reasoning=reasoning, completion_tokens=len(ids)))
        return answers


class LocalChat:
    """Async chat over a local checkpoint: one conversation per call; calls that arrive together
    (concurrent consultations) are generated as one batch of up to `generator.batch_size`."""

    def __init__(self, generator: HFChatGenerator):
        from m3.model.batching import MicroBatcher

        self.generator = generator
        self._batcher = MicroBatcher(generator.chat, generator.batch_size)

    async def __call__(self, messages: list[dict]) -> ChatAnswer:
        return await self._batcher.submit(messages)

    async def aclose(self) -> None:
        return None


class EndpointChat:
    """Async chat over an OpenAI-compatible endpoint (vLLM/SGLang with `--reasoning-parser qwen3`,
    `transformers serve`, APIs). Thinking is toggled through `chat_template_kwargs`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        enable_thinking: bool = False,
    ):
        from m3.llm import AsyncLLMClient, LLMConfig

        self.client = AsyncLLMClient(
            LLMConfig(
                model=model,
                base_url=base_url,
                api_key_env=api_key_env,
                temperature=temperature,
                max_tokens=max_new_tokens,
            )
        )
        self.extra = {"chat_template_kwargs": {"enable_thinking": enable_thinking}}

    async def __call__(self, messages: list[dict]) -> ChatAnswer:
        r = await self.client.chat(messages, extra=self.extra)
        if not r.ok:
            raise RuntimeError(f"generation failed at the endpoint: {r.error}")
        reasoning, text = split_reasoning(r.text)
        return ChatAnswer(
            text=text, reasoning=reasoning, completion_tokens=int(r.usage.get("completion_tokens", 0))
        )

    async def aclose(self) -> None:
        await self.client.aclose()
