"""Gated Eagle3 draft: data from the target, draft model, training-time test, export, speculative decoding."""
