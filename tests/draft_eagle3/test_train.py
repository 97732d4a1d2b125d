"""`python -m draft_eagle3` on the tiny target: data from the target, gated and ungated drafts
learn (loss down, TTT accuracy and acceptance length up over the untrained draft), per-step
accuracy in MLflow, m3-draft registered with lineage, reloads and decodes with the same acceptance."""

from __future__ import annotations

import json

import mlflow
import torch
from transformers import AutoModelForCausalLM

from draft_eagle3 import train
from draft_eagle3.export import load_draft
from draft_eagle3.speculative import compare
from m3 import registry
from m3.config import compose


def test_train_registers_a_draft_that_beats_the_untrained_one(mlflow_store, tiny_dir, tmp_path):
    registry.publish(tiny_dir, "m3-mopd", stage="stage3")
    overrides = [
        "prompts_per_domain=4",
        "heldout_per_domain=1",
        "max_new_tokens=24",
        "steps=30",
        "eval_k=4",
        "eval_max_new_tokens=24",
        "export_dtype=float32",
        f"out_dir={tmp_path / 'run'}",
        f"summary_out={tmp_path / 'summary.json'}",
    ]
    mv = train.main(compose("draft", overrides))
    log = json.loads((tmp_path / "run" / "results.json").read_text())
    ev, hist = log["eval"], log["history"]
    for v in ("gated", "ungated"):
        assert ev[v]["identical_outputs"]  # speculative output == plain greedy, token for token
        assert ev[v]["acceptance_length"] > ev["untrained"]["acceptance_length"] + 0.5
        first, last = hist[:5], hist[-5:]
        assert sum(h[f"{v}/loss"] for h in last) < sum(h[f"{v}/loss"] for h in first)
        assert sum(h[f"{v}/acc_3"] for h in last) > sum(h[f"{v}/acc_3"] for h in first)
    assert json.loads(mv.tags["m3.parents"]) == ["models:/m3-mopd/1"]
    assert mv.tags["m3.draft_variant"] == "gated"
    run = mlflow.get_run(mv.run_id)
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "gated/acc_6")) == 30  # per step, k=7
    assert "eval/gated/acceptance_length" in run.data.metrics
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step"] == "draft" and summary["value"].startswith(
        f"{ev['gated']['acceptance_length']:.2f}"
    )

    # the registered artifact reloads and decodes with the acceptance length it was evaluated at
    path = registry.resolve("models:/m3-draft@candidate")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3Gated"]
    assert cfg["m3_eagle3"]["target"] == "models:/m3-mopd/1"
    target = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    draft = load_draft(path, target).eval()
    init_head = target.get_output_embeddings().weight[draft.d2t + torch.arange(len(draft.d2t))]
    assert not torch.equal(draft.lm_head.weight, init_head)  # trained away from its initialization
    tok = train.load_target(tiny_dir, "cpu")[1]
    cfg_obj = compose("draft", overrides)
    _, held = train.prompt_sets(cfg_obj, tok)
    again = compare(target, draft, held, 4, 24, train.eos_ids(target))
    assert again["acceptance_length"] == ev["gated"]["acceptance_length"]

    # same config and target: nothing is retrained
    assert train.main(compose("draft", overrides)).version == mv.version
