"""Judge selection from config: `offline` (deterministic, no network) or `openai` (any endpoint).

judge:
  backend: openai                  # or offline
  model: Qwen/Qwen3-235B-A22B      # served model name
  base_url: http://127.0.0.1:8000/v1
  api_key_env: OPENAI_API_KEY      # the variable's NAME; the key stays in the environment
  cache_path: mlruns/judge_cache.sqlite
"""

from __future__ import annotations

from dataclasses import dataclass

from m3.judges.base import RubricJudge


@dataclass
class JudgeConfig:
    backend: str = "offline"  # offline | openai
    model: str = "gpt-4.1"
    base_url: str | None = None  # None: $M3_LLM_BASE_URL, else the openai client's default
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 32
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_base_s: float = 0.5
    json_retries: int = 3
    cache_path: str | None = "mlruns/judge_cache.sqlite"
    temperature: float = 0.0
    max_tokens: int = 1024


def build_rubric_judge(cfg: JudgeConfig) -> RubricJudge:
    if cfg.backend == "offline":
        from m3.judges.offline import OfflineRubricJudge

        return OfflineRubricJudge()
    if cfg.backend == "openai":
        from m3.judges.openai_judge import OpenAIRubricJudge
        from m3.llm import LLMConfig

        kwargs = {} if cfg.base_url is None else {"base_url": cfg.base_url}
        return OpenAIRubricJudge(
            LLMConfig(
                model=cfg.model,
                api_key_env=cfg.api_key_env,
                max_concurrency=cfg.max_concurrency,
                timeout_s=cfg.timeout_s,
                max_retries=cfg.max_retries,
                backoff_base_s=cfg.backoff_base_s,
                json_retries=cfg.json_retries,
                cache_path=cfg.cache_path,
                temperature=cfg.temperature,
                max_tokens=cfg.max_tokens,
                **kwargs,
            )
        )
    raise ValueError(f"judge.backend must be 'offline' or 'openai', got {cfg.backend!r}")


def judge_backend_name(cfg: JudgeConfig) -> str:
    """The name a report prints for this judge, without building it (no model load, no client)."""
    if cfg.backend == "offline":
        from m3.judges.offline import OfflineRubricJudge

        return OfflineRubricJudge.name
    return f"openai:{cfg.model}"
