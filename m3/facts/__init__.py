"""Fact-Aware RL: claim extraction, evidence verification, the two-level claim cache and the
denoised factuality reward with its dynamic gate (docs/formulas.md, Fact-Aware RL)."""
