"""HealthBench-Hallu: hallucination rate of answers to HealthBench prompts."""
