"""Stage 1 local training: the engine learns from rewards (verl's loss and estimators), checkpoints
resume, a 3-step run logs metrics and registers an expert that reloads; consultations use SPAR."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from m3 import registry
from m3.config import compose
from m3.rl.engine import LocalEngine, LocalRLConfig
from stage1_expert_rl import train

CONSTRAINTS = [{"type": "max_words", "value": 3}, {"type": "lowercase"}]
ROW = {
    "prompt": [{"role": "user", "content": "Describe fever in a few words."}],
    "data_source": "m3_general",
    "reward_model": {"style": "rule", "ground_truth": None},
    "extra_info": {"constraints": json.dumps(CONSTRAINTS)},
}


def seq_logprob(engine, t) -> float:
    with torch.no_grad():
        lp, mask = engine._log_probs([t])
    return float((lp * mask).sum())


def test_update_moves_towards_rewarded_response(tiny_dir, tmp_path):
    engine = LocalEngine(tiny_dir, LocalRLConfig(group_size=2, max_new_tokens=6, lr=1e-2), tmp_path)
    good, bad = engine.rollout([ROW])
    for t, r in ((good, 1.0), (bad, 0.0)):  # a group with a clear winner
        t.reward, t.rm_scores = r, [0.0] * (len(t.response_ids) - 1) + [r]
    gap0 = seq_logprob(engine, good) - seq_logprob(engine, bad)
    for _ in range(3):
        metrics = engine.update([good, bad])
    assert metrics["grad_norm"] > 0 and engine.step == 3
    assert seq_logprob(engine, good) - seq_logprob(engine, bad) > gap0 + 1.0


def test_checkpoint_resumes(tiny_dir, tmp_path):
    engine = LocalEngine(tiny_dir, LocalRLConfig(group_size=4, max_new_tokens=6, lr=1e-2), tmp_path)
    engine.update(engine.rollout([ROW]))
    engine.save()
    again = LocalEngine(tiny_dir, LocalRLConfig(group_size=4, max_new_tokens=6, lr=1e-2), tmp_path)
    assert again.step == 1
    for a, b in zip(engine.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert again.optim.state_dict()["state"]  # Adam moments restored, not re-initialised


def test_consultation_rollout_carries_spar_rewards(tiny_dir, tmp_path):
    from m3.data.prompts import domain_rows
    from m3.rl.spar import decode_step_rewards

    row = domain_rows("inquiry", 1, max_inquiry_turns=2)[0]
    engine = LocalEngine(
        tiny_dir, LocalRLConfig(group_size=2, max_new_tokens=6, max_response_length=512), tmp_path
    )
    trajs = engine.rollout([row])
    for t in trajs:
        assert 0 in t.response_mask and 1 in t.response_mask  # patient/instruction tokens are context
        r_global, step_returns = decode_step_rewards(
            torch.tensor([t.rm_scores]), torch.tensor([t.response_mask])
        )
        # rows sum to R_global; one penalised return per doctor turn (2 inquiry turns + 3 stages)
        assert float(r_global[0]) == pytest.approx(t.reward, abs=1e-5) and len(step_returns[0]) >= 3
    metrics = engine.update(trajs)
    assert set(metrics) >= {"reward_mean", "pg_loss", "grad_norm"}


def test_arms_with_one_seed_draw_the_same_rollouts(tiny_dir, tmp_path):
    """Per-request seeds pair the arms of an ablation: SPAR at batch 1 and GRPO at batch 4 with the
    same seed sample the same consultations from the same weights; another seed samples others."""
    from m3.data.prompts import domain_rows

    rows = domain_rows("inquiry", 2, max_inquiry_turns=2)

    def responses(tag, **kw):
        cfg = LocalRLConfig(group_size=2, max_new_tokens=6, max_response_length=512, **kw)
        return [t.response_ids for t in LocalEngine(tiny_dir, cfg, tmp_path / tag).rollout(rows)]

    spar = responses("spar", consultation_estimator="spar")
    assert responses("grpo", consultation_estimator="grpo", rollout_batch=4) == spar
    assert len({tuple(r) for r in spar}) == 4  # every sample of a group is its own draw
    assert responses("seed1", seed=1) != spar
    # the server-wide generator (request_seeds off) draws in arrival order: batching changes it
    assert responses("b1", request_seeds=False) != responses("b4", request_seeds=False, rollout_batch=4)


def test_three_step_run_logs_registers_and_reloads(mlflow_store, tiny_dir, tmp_path):
    base = registry.publish(tiny_dir, "m3-base", stage="base")
    data = tmp_path / "general.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p, "constraints": CONSTRAINTS}) + "\n"
            for p in ["Describe fever.", "Name a vitamin.", "Define anemia."]
        )
    )
    cfg = compose(
        "stage1",
        [
            "expert=general",
            f"data={data}",
            "steps=3",
            "n_prompts=3",
            "prompts_per_step=1",
            "rl.group_size=6",
            "rl.max_new_tokens=8",
            "rl.lr=1e-2",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    mv = train.main(cfg)
    assert mv.name == "m3-expert-general"
    assert json.loads(mv.tags["m3.parents"]) == [f"models:/m3-base/{base.version}"]
    assert "general" in json.loads(mv.tags["m3.data_hashes"])
    run = mlflow.get_run(mv.run_id)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "reward_mean")
    assert [m.step for m in history] == [1, 2, 3]
    trained = AutoModelForCausalLM.from_pretrained(registry.resolve("models:/m3-expert-general@candidate"))
    original = AutoModelForCausalLM.from_pretrained(tiny_dir)
    changed = sum(
        not torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), original.state_dict().values(), strict=True)
    )
    assert changed > 0  # learning happened (the rollouts' rewards differ within groups)
    assert train.main(cfg).version == mv.version  # same config and base: skipped, not retrained


@pytest.mark.parametrize("backend,size", [("fsdp2", "qwen3_8b"), ("megatron", "qwen3_235b_a22b")])
def test_cluster_dry_run_prints_validated_ray_command(
    mlflow_store, tiny_dir, tmp_path, capsys, backend, size
):
    registry.publish(tiny_dir, "m3-base", stage="base")
    cfg = compose(
        "stage1",
        [
            "expert=healthcare",
            "scale=cluster",
            "dry_run=true",
            f"scale.backend={backend}",
            f"model={size}",
            f"out_dir={tmp_path / 'c'}",
        ],
    )
    train.main(cfg)
    cmd = capsys.readouterr().out.strip().splitlines()[-1]
    assert cmd.startswith("ray job submit") and "verl.trainer.main_ppo" in cmd
    assert "algorithm.adv_estimator='spar'" in cmd and "experiment_name='m3-expert-healthcare'" in cmd
    assert (tmp_path / "c" / "train.parquet").is_file() and (tmp_path / "c" / "val.parquet").is_file()


@pytest.mark.slow
def test_inquiry_pipeline_run_mixes_stages(mlflow_store, tiny_dir, tmp_path):
    """SPAR's segmented pipeline in the local loop: the cases that passed the Inquiry gate in step 1 are
    trained on DDX in step 2 from their carried transcripts. (Local batches fill idle slots with new
    cases, so here they move in waves; stages mixing in one batch is tested in test_pipeline.py.)"""
    registry.publish(tiny_dir, "m3-base", stage="base")
    cfg = compose(
        "stage1",
        [
            "expert=inquiry",
            "steps=2",
            "n_prompts=3",
            "prompts_per_step=4",
            "gate_tau=0.0",
            "rl.group_size=2",
            "rl.max_new_tokens=4",
            f"out_dir={tmp_path / 'run'}",
        ],
    )
    train.main(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # reported counts are cumulative: step 1 reports the three Inquiry tasks, step 2 DDX tasks only
    assert history[0]["pipeline/inquiry/reported"] == 3 and history[0]["pipeline/ddx/reported"] == 0
    assert history[1]["pipeline/inquiry/reported"] == 3 and history[1]["pipeline/ddx/reported"] > 0
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert state  # the scheduler state is saved each step, so a killed run resumes its pools


def test_dynamic_rubrics_run_locally_and_log_the_pool(mlflow_store, tiny_dir, tmp_path):
    """`make stage1 EXPERT=healthcare ARGS="rubrics.dynamic=true"` on the tiny model: each step is
    mined, the pool is saved and logged to MLflow at every epoch end, the rows carry its version."""
    registry.publish(tiny_dir, "m3-base", stage="base")
    cfg = compose(
        "stage1",
        ["expert=healthcare", "rubrics.dynamic=true", "rubrics.top_quantile=0.0", "steps=2", "n_prompts=2",
         "prompts_per_step=1", "rl.group_size=2", "rl.max_new_tokens=6", f"out_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    mv = train.main(cfg)
    pool = json.loads((tmp_path / "run" / "rubric_pool.json").read_text())
    assert pool["config"]["dynamic"] is True and len(pool["window"]) == 2  # both steps observed
    assert (tmp_path / "run" / "rubric_pool.png").is_file()  # the pool's history, plotted
    client = mlflow.MlflowClient()
    arts = [a.path for a in client.list_artifacts(mv.run_id, "rubric_pool")]
    assert arts == ["rubric_pool/epoch-001.json"]  # 2 prompts, 1 per step: one epoch
    assert "rubric_pool/active" in mlflow.get_run(mv.run_id).data.metrics
    with pytest.raises(ValueError, match="expert=healthcare"):
        compose("stage1", ["expert=general", "rubrics.dynamic=true"])


def test_dynamic_rubrics_compose_on_the_cluster(mlflow_store, tiny_dir, tmp_path, capsys):
    registry.publish(tiny_dir, "m3-base", stage="base")
    cfg = compose(
        "stage1",
        [
            "expert=healthcare",
            "scale=cluster",
            "dry_run=true",
            "rubrics.dynamic=true",
            f"out_dir={tmp_path / 'c'}",
        ],
    )
    train.main(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        lines[-2].startswith("python -m stage1_expert_rl.rubric_miner --rollouts") and "--follow" in lines[-2]
    )
    assert f"trainer.rollout_data_dir='{tmp_path / 'c' / 'rollouts'}'" in lines[-1]
    assert f"reward_kwargs={{rubric_pool:'{tmp_path / 'c' / 'rubric_pool.json'}'}}" in lines[-1]
