"""The patient simulator's configuration: backend ("offline" | "openai") and retrieval knobs.

from m3.clinic.patient.config import SimulatorConfig
SimulatorConfig(backend="openai", model="gpt-4.1", cache_path="sim.sqlite")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m3.llm import LLMConfig

BACKENDS = ("offline", "openai")


@dataclass(unsafe_hash=True)  # hashable (one simulator per config) yet mergeable by Hydra
class SimulatorConfig:
    """Backend and retrieval knobs; the llm_* fields describe the endpoint of backend "openai"."""

    backend: str = "offline"
    max_facts: int = 2  # facts disclosed per reply at most
    sim_threshold: float = 0.6  # MiniLM cosine that alone makes a fact an answer
    lexical_sim_floor: float = 0.3  # cosine needed by a fact sharing a content word with the question
    topic_sim_threshold: float = 0.5  # cosine a fact of a topic's "soft" category needs
    lexical_weight: float = 0.3  # ranking bonus: share of question words found in the fact
    topic_bonus: float = 0.2  # ranking bonus per topic cue the fact matches (category, words)
    margin: float = 0.15  # without a topic, keep only facts scoring within this of the best
    child_age: int = 12  # younger patients are spoken for by a parent
    check_retries: int = 1  # LLM answers re-asked after a failed factual check, then the offline answer
    model: str = ""
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    cache_path: str | None = None
    temperature: float = 0.0
    max_tokens: int = 300
    timeout_s: float = 60.0
    max_concurrency: int = 16

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"SimulatorConfig.backend={self.backend!r}: use one of {BACKENDS}")
        if self.backend == "openai" and not self.model.strip():
            raise ValueError("SimulatorConfig(backend='openai') needs model=... (the served model name)")
        if self.max_facts < 1:
            raise ValueError(f"SimulatorConfig.max_facts={self.max_facts} must be >= 1 (e.g. 2)")
        for name in ("sim_threshold", "lexical_sim_floor", "topic_sim_threshold"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"SimulatorConfig.{name}={getattr(self, name)} is a cosine: keep it in [-1, 1]"
                )
        for name in ("lexical_weight", "topic_bonus", "margin", "check_retries", "child_age"):
            if getattr(self, name) < 0:
                raise ValueError(f"SimulatorConfig.{name}={getattr(self, name)} must be >= 0")

    def llm_config(self) -> LLMConfig:
        from m3.llm import LLMConfig

        return LLMConfig(
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            cache_path=self.cache_path,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout_s=self.timeout_s,
            max_concurrency=self.max_concurrency,
            template_version="patient-sim-v1",  # bump with the prompt in m3.clinic.patient.llm
        )
