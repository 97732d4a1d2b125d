"""Registry hand-off: publish -> resolve -> load, by copy and by reference, lineage, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from m3 import registry
from m3.cli import main as m3_main
from m3.config import compose, config_hash
from m3.registry import RegistryError


def test_publish_copy_resolve_load(mlflow_store, tiny_dir, capsys):
    cfg = compose("base")
    mv = registry.publish(tiny_dir, "m3-base", stage="base", config=cfg, data_hashes={"x": "1"})
    path = registry.resolve("models:/m3-base@candidate")
    assert path != tiny_dir and (path / "model.safetensors").is_file()
    assert registry.resolve(f"models:/m3-base/{mv.version}") == path
    a = AutoModelForCausalLM.from_pretrained(tiny_dir)
    b = AutoModelForCausalLM.from_pretrained(path)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    # lineage: a child pins the parent's concrete version
    child = registry.publish(tiny_dir, "m3-distill", stage="stage2", parents=["models:/m3-base@candidate"])
    assert json.loads(child.tags["m3.parents"]) == [f"models:/m3-base/{mv.version}"]
    assert mv.tags["m3.config_hash"] == config_hash(cfg) and mv.tags["m3.storage"] == "copy"
    assert json.loads(mv.tags["m3.data_hashes"]) == {"x": "1"} and mv.tags["m3.git_commit"]
    # find_version recognises the same config, not another
    assert registry.find_version("m3-base", config_hash(cfg)).version == mv.version
    assert registry.find_version("m3-base", "0" * 12) is None
    # CLI
    assert m3_main(["registry", "resolve", "models:/m3-base@candidate"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert m3_main(["registry", "ls"]) == 0
    out = capsys.readouterr().out
    assert "m3-base" in out and "v1 @candidate" in out and "m3-distill" in out and "models:/m3-base/1" in out


def test_by_reference_detects_corruption(mlflow_store, tiny_dir, tmp_path):
    big = tmp_path / "huge-checkpoint"
    shutil.copytree(tiny_dir, big)
    mv = registry.publish(big, "m3-w4", stage="quant", by_reference=True)
    assert mv.tags["m3.storage"] == "reference"
    assert registry.resolve("models:/m3-w4@candidate") == big.resolve()
    with open(big / "model.safetensors", "r+b") as f:  # flip bytes, keep the size
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(RegistryError, match="corrupted: .*model.safetensors"):
        registry.resolve("models:/m3-w4@candidate")
    (big / "config.json").unlink()
    with pytest.raises(RegistryError, match="missing"):
        registry.resolve("models:/m3-w4@candidate")


def test_missing_model_names_make_target(mlflow_store, tiny_dir, capsys):
    with pytest.raises(RegistryError, match="make stage2"):
        registry.resolve("models:/m3-distill@candidate")
    registry.publish(tiny_dir, "m3-base", stage="base")
    with pytest.raises(RegistryError, match="alias champion.*make base"):
        registry.resolve("models:/m3-base@champion")
    with pytest.raises(ValueError, match="not a model URI"):
        registry.parse_uri("models:/m3-base:latest")
    assert m3_main(["registry", "resolve", "models:/m3-mopd@candidate"]) == 2
    assert "make stage3" in capsys.readouterr().err


def test_base_command_registers_then_skips(mlflow_store, capsys):
    assert m3_main(["base"]) == 0
    assert m3_main(["base"]) == 0
    out = capsys.readouterr().out
    assert "registered version 1" in out and "up to date (version 1" in out
    path = registry.resolve("models:/m3-base@candidate")
    assert (path / "tokenizer.json").is_file() and (path / "m3_meta.json").is_file()


def test_base_rejects_pickled_weights(tmp_path):
    from m3.model.base import check_safetensors_only

    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors only"):
        check_safetensors_only(tmp_path)


def test_up_to_date_keeps_the_figures_its_run_summarised(mlflow_store, tiny_dir, tmp_path):
    """A resumed demo: the skip path must not overwrite the summary the registering run wrote,
    and writes its own line where the file holds another version's or another step's summary."""
    from m3.runs import StageRun

    summary = tmp_path / "s.json"
    run = StageRun("m3-base", {"a": 1}, stage="base", step="base")
    assert run.up_to_date(str(summary), "b") is None
    run.publish(tiny_dir, summary_out=str(summary), metric="reward", value="0.2->0.3 (v{version})")
    assert int(run.up_to_date(str(summary), "b").version) == 1
    assert json.loads(summary.read_text())["value"] == "0.2->0.3 (v1)"
    summary.write_text(json.dumps({"step": "base", "metric": "reward", "value": "0.2->0.3 (v7)"}))
    run.up_to_date(str(summary), "b")
    assert json.loads(summary.read_text())["value"] == "v1"
    summary.write_text(json.dumps({"step": "draft", "metric": "al", "value": "v1"}))
    run.up_to_date(str(summary), "b")
    assert json.loads(summary.read_text()) == {
        "step": "base",
        "metric": "registered (up to date)",
        "value": "v1",
        "backend": "b",
    }
