"""Stage 1: domain-expert RL (Clinical-Inquiry with SPAR, Healthcare, General).

    python -m stage1_expert_rl.data --expert inquiry --input data/agentclinic_medqa.jsonl --out outputs/stage1/inquiry
    python -m stage1_expert_rl.data --expert general --out outputs/stage1/general   # built-in prompt generator

`data` writes the verl parquet of each expert; `pipeline` is SPAR's segmented pipeline scheduler
(per-stage task pools with a quality gate). This package imports `m3/` and `eval/` only.
"""
