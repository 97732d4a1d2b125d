"""The doctor under evaluation: a registered/local checkpoint or an OpenAI-compatible endpoint."""

from __future__ import annotations

from m3 import registry
from m3.clinic.episode import DoctorReply
from m3.model.generate import EndpointChat, HFChatGenerator, LocalChat


class ChatDoctor:
    """Adapts a chat callable (LocalChat / EndpointChat) to the episode's Doctor interface."""

    def __init__(self, chat):
        self.chat = chat

    async def __call__(self, messages: list[dict]) -> DoctorReply:
        return DoctorReply((await self.chat(messages)).text)

    async def aclose(self) -> None:
        await self.chat.aclose()


def build_doctor(cfg) -> ChatDoctor:
    g = cfg.generation
    if cfg.endpoint:
        return ChatDoctor(
            EndpointChat(
                cfg.endpoint,
                cfg.endpoint_model,
                api_key_env=cfg.endpoint_api_key_env,
                max_new_tokens=g.max_new_tokens,
                temperature=g.temperature,
                enable_thinking=g.enable_thinking,
            )
        )
    gen = HFChatGenerator(
        registry.resolve(cfg.model or ""),
        max_new_tokens=g.max_new_tokens,
        temperature=g.temperature,
        enable_thinking=g.enable_thinking,
        batch_size=max(8, cfg.concurrent_cases),  # concurrent consultations share one generate() call
        seed=cfg.seed,
    )
    return ChatDoctor(LocalChat(gen))
