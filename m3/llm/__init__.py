"""m3.llm: the async client for any OpenAI-compatible endpoint, shared by judges and evaluations.

`AsyncLLMClient(LLMConfig(...))` gives bounded concurrency, retries with jittered backoff, JSON
re-asks and a persistent sqlite cache (`m3.llm.cache`). See `m3/llm/client.py` for usage.
"""

from m3.llm.cache import CachedAnswer, CacheStats, ResponseCache, cache_key
from m3.llm.client import (
    AsyncLLMClient,
    ChatResult,
    ClientStats,
    JsonResult,
    LLMConfig,
    gather_bounded,
    parse_json_object,
)

__all__ = [
    "AsyncLLMClient",
    "CacheStats",
    "CachedAnswer",
    "ChatResult",
    "ClientStats",
    "JsonResult",
    "LLMConfig",
    "ResponseCache",
    "cache_key",
    "gather_bounded",
    "parse_json_object",
]
