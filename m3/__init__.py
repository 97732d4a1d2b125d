"""m3: the shared library of the Baichuan-M3 reproduction.

It holds the things every stage uses: the tiny model factory (`m3.tiny`), the Qwen3 tokenizer
rebuilt offline (`m3.tokenizer`), the MLflow registry hand-off (`m3.registry`), structured configs
(`m3.config`), the OpenAI-compatible LLM client (`m3.llm`) and the judges (`m3.judges`).
Stages (`stage1_expert_rl/`, ...) hold the actions and import from here, never the other way.
"""

__version__ = "0.1.0"
