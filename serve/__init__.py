"""serve: OpenAI-compatible serving (vLLM / SGLang with W4 and the Eagle3 draft; transformers serve locally)."""
