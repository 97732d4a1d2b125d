"""Stage 2 local run: teacher data with log-probs from the registered experts, Clip-FKL training
lowers the loss and raises the student's log-prob of teacher tokens, m3-distill reloads."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from m3 import registry
from m3.config import compose
from m3.model.tiny import write_tiny_checkpoint
from stage2_distill import train
from stage2_distill.records import read_records


def test_local_distillation_run(mlflow_store, tiny_dir, tmp_path):
    student = write_tiny_checkpoint(tmp_path / "student", "tiny", seed=1)  # differs from the teachers
    registry.publish(student, "m3-base", stage="base")
    for d in ("inquiry", "healthcare", "general"):
        registry.publish(tiny_dir, f"m3-expert-{d}", stage="stage1")
    cfg = compose(
        "stage2",
        [
            "prompts_per_domain=2",
            "heldout_per_domain=1",
            "steps=12",
            "batch_size=4",
            "lr=5e-3",
            "rollout.max_new_tokens=8",
            "rollout.rollout_batch=8",  # the teachers' rollouts batched, as vLLM would serve them
            "max_inquiry_turns=2",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    mv = train.main(cfg)
    records = read_records(tmp_path / "run" / "teacher_data.parquet")
    assert {r["domain"] for r in records} == {"inquiry", "healthcare", "general"} and len(records) == 9
    consult = next(r for r in records if r["domain"] == "inquiry")
    assert 0 in consult["loss_mask"] and 1 in consult["loss_mask"]  # simulator turns are not teacher tokens
    assert all(
        lp == 0.0 for lp, m in zip(consult["teacher_logprobs"], consult["loss_mask"], strict=True) if not m
    )
    assert all(lp < 0 for lp, m in zip(consult["teacher_logprobs"], consult["loss_mask"], strict=True) if m)
    log = json.loads((tmp_path / "run" / "history.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert sum(losses[-4:]) < sum(losses[:4])  # learning happened
    assert all(0.0 <= h["clip/masked_frac"] <= 1.0 for h in log["history"])
    before, after = log["eval_before"], log["eval_after"]
    logp = [k for k in after if k.endswith("/teacher_token_logp")]
    kl = [k for k in after if k.endswith("/kl_teacher_student")]
    assert len(logp) == len(kl) == 3
    assert sum(after[k] for k in logp) > sum(before[k] for k in logp)  # teacher tokens more likely
    assert sum(after[k] for k in kl) < sum(before[k] for k in kl)  # and the student closer to the teachers
    assert json.loads(mv.tags["m3.parents"])[1:] == [
        f"models:/m3-expert-{d}/1" for d in ("inquiry", "healthcare", "general")
    ]
    reloaded = AutoModelForCausalLM.from_pretrained(registry.resolve("models:/m3-distill@candidate"))
    init = AutoModelForCausalLM.from_pretrained(student)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(reloaded.state_dict().values(), init.state_dict().values(), strict=True)
    )
