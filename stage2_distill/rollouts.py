"""Stage-2 teacher rollouts: each expert answers its own domain's prompts, with its log-probs.

Per sample we store the domain, the token ids (prompt and response), the loss mask (1 on the
teacher's own tokens; 0 on simulator turns and stage instructions of consultations) and the
teacher's log-prob of every sampled response token, as parquet via `datasets`; the data hash is
logged with the student. Consultations run through the same "m3_consultation" agent loop and the
patient simulator as stage 1; healthcare and general prompts are single-turn.

Local: HF generation on the tiny experts (`m3.rl.engine.LocalEngine` rollouts, temperature 1 so the
stored log-probs are the teacher's own distribution). Cluster: the same rows go to a vLLM offline
batch job with `logprobs=0` (the sampled token's log-prob): `stage2_distill/vllm_teacher.py`.
"""

from __future__ import annotations

from pathlib import Path

from m3.rl.engine import LocalEngine, LocalRLConfig


def teacher_samples(
    teacher_dir: str | Path, domain: str, rows: list[dict], cfg: LocalRLConfig, work_dir: Path
) -> list[dict]:
    """Sample one answer per row from `teacher_dir`; returns the stage-2 records."""
    engine = LocalEngine(teacher_dir, LocalRLConfig(**{**cfg.__dict__, "group_size": 1}), work_dir)
    engine.score = False  # distillation data needs the teacher's tokens and log-probs, not rewards
    records = []
    for row, t in zip(rows, engine.rollout(rows), strict=True):
        if len(t.logprobs or []) != len(t.response_ids):
            raise RuntimeError(
                f"{domain}: the server returned {len(t.logprobs or [])} log-probs for "
                f"{len(t.response_ids)} tokens; teacher log-probs are required"
            )
        records.append(
            {
                "domain": domain,
                "prompt_ids": t.prompt_ids,
                "response_ids": t.response_ids,
                "loss_mask": t.response_mask,
                "teacher_logprobs": [
                    lp if m else 0.0 for lp, m in zip(t.logprobs, t.response_mask, strict=True)
                ],
                "source_id": str(
                    (row.get("extra_info") or {}).get("case_id")
                    or (row.get("extra_info") or {}).get("prompt_id")
                    or ""
                ),
            }
        )
    return records
