"""HealthBench (OpenAI, 2025): data loading and rubric scoring, identical to simple-evals.

Modules and command line:

    m3.data.healthbench      read the official JSONL (main / hard / consensus) from a path or URL
    eval.healthbench.scoring   per-example rubric scores and the clipped-mean + bootstrap aggregate
    python -m eval.healthbench score --graded GRADED.jsonl --out METRICS.json
"""
