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
    # openai backend's prompt (m3.judges.openai_judge): m3-prefix-cache (RL rewards: shared prefix
    # first, for the engine's prefix cache) | simple-evals (HealthBench evaluation: simple-evals'
    # GRADER_TEMPLATE verbatim, comparable with published numbers)
    template: str = "m3-prefix-cache"
    # simple-evals template only: its grading sampler's system message (None: the user message alone)
    system_message: str | None = "You are a helpful assistant."
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

    def __post_init__(self) -> None:
        if self.template not in ("m3-prefix-cache", "simple-evals"):
            raise ValueError(f"judge.template must be m3-prefix-cache or simple-evals, got {self.template!r}")


def simple_evals_judge() -> JudgeConfig:
    """The HealthBench evaluation grader: simple-evals' template, temperature 0.5 and 2048 tokens
    as its gpt-4.1 grading sampler (the offline backend ignores all three)."""
    return JudgeConfig(template="simple-evals", temperature=0.5, max_tokens=2048)


def build_rubric_judge(cfg: JudgeConfig) -> RubricJudge:
    if cfg.backend == "offline":
        from m3.judges.offline import OfflineRubricJudge

        return OfflineRubricJudge()
    if cfg.backend == "openai":
        from m3.judges.openai_judge import OpenAIRubricJudge
        from m3.llm import LLMConfig

        kwargs = {} if cfg.base_url is None else {"base_url": cfg.base_url}
        return OpenAIRubricJudge(
            template=cfg.template,
            system_message=cfg.system_message,
            cfg=LLMConfig(
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
            ),
        )
    raise ValueError(f"judge.backend must be 'offline' or 'openai', got {cfg.backend!r}")


def grader_template_name(cfg: JudgeConfig) -> str:
    """The prompt that graded: the template name (openai backend), or that no prompt was used."""
    return cfg.template if cfg.backend == "openai" else "none (offline judge)"


def judge_backend_name(cfg: JudgeConfig) -> str:
    """The name a report prints for this judge, without building it (no model load, no client)."""
    if cfg.backend == "offline":
        from m3.judges.offline import OfflineRubricJudge

        return OfflineRubricJudge.name
    return f"openai:{cfg.model}"
