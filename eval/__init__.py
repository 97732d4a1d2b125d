"""Evaluations: HealthBench, HealthBench-Hallu, OSCE. Imports only m3/."""
