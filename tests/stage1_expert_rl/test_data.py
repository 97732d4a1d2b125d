"""Stage-1 parquet files: schema per expert read back with `datasets`, stable hashes, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_dataset

from m3.data.prompts import (
    constraints_of,
    data_hash,
    generate_general,
    load_general,
    split_rows,
    write_parquet,
)
from m3.rl.agent_loop import EpisodeSpec
from stage1_expert_rl.data import build_rows, main

DATA = Path(__file__).resolve().parents[2] / "data"
INPUTS = {
    "inquiry": DATA / "agentclinic_medqa.jsonl",
    "healthcare": DATA / "healthbench_sample30.jsonl",
    "general": None,
}


def read(path):
    return load_dataset("parquet", data_files=str(path), split="train")


@pytest.mark.parametrize("expert", ["inquiry", "healthcare", "general"])
def test_parquet_schema_per_expert(expert, tmp_path):
    rows = build_rows(expert, INPUTS[expert] and str(INPUTS[expert]), 20, 0)[:20]
    digest = write_parquet(rows, tmp_path / "x.parquet")
    ds = read(tmp_path / "x.parquet")
    assert set(ds.column_names) == {
        "prompt",
        "data_source",
        "ability",
        "reward_model",
        "extra_info",
        "agent_name",
    }
    row = ds[0]
    assert row["data_source"] == f"m3_{expert}"
    assert all(set(m) == {"role", "content"} for m in row["prompt"]) and row["prompt"][-1]["role"] == "user"
    assert row["reward_model"]["style"] == ("model" if expert == "healthcare" else "rule")
    assert isinstance(row["reward_model"]["ground_truth"], str)
    extra = row["extra_info"]
    if expert == "inquiry":
        assert row["agent_name"] == "m3_consultation" and extra["stages"] == [
            "inquiry",
            "ddx",
            "lab",
            "diagnosis",
        ]
        assert EpisodeSpec.from_extra_info(extra).case.case_id == extra["case_id"]
    elif expert == "healthcare":
        assert extra["prompt"] == row["prompt"] and extra["prompt_id"]
        assert {"criterion", "points", "tags"} == set(extra["rubrics"][0])
    else:
        assert all(c["type"] for c in constraints_of(extra))
    assert digest == data_hash(rows) == write_parquet(rows, tmp_path / "y.parquet")  # stable


def test_general_generator_is_deterministic_and_valid():
    a, b = generate_general(30, seed=1), generate_general(30, seed=1)
    assert a == b and a != generate_general(30, seed=2)
    for item in a:
        types = [c["type"] for c in item["constraints"]]
        assert 1 <= len(types) <= 3 and not ("json_format" in types and "num_bullets" in types)


def test_bad_lines_name_file_line_and_field(tmp_path):
    p = tmp_path / "g.jsonl"
    good = {"prompt": "Explain asthma.", "constraints": [{"type": "max_words", "value": 50}]}
    bad = {
        "prompt": "Explain gout.",
        "constraints": [{"type": "lowercase"}, {"type": "num_bullets", "value": "three"}],
    }
    p.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"g\.jsonl:3: field 'constraints\[1\]\.value'"):
        load_general(p)
    p.write_text(json.dumps({"constraints": good["constraints"]}) + "\n")
    with pytest.raises(ValueError, match=r"g\.jsonl:1: field 'prompt'"):
        load_general(p)
    hb = tmp_path / "hb.jsonl"
    hb.write_text(json.dumps({"prompt_id": "x", "prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"hb\.jsonl:1: field 'rubrics'"):
        build_rows("healthcare", str(hb), 0, 0)


def test_split_and_cli(tmp_path):
    rows = [{"i": i} for i in range(20)]
    train, val = split_rows(rows, 0.1, seed=3)
    assert len(val) == 2 and sorted(r["i"] for r in train + val) == list(range(20))
    assert split_rows(rows, 0.1, seed=3) == (train, val)
    manifest = main(["--expert", "general", "--n", "12", "--out", str(tmp_path / "g")])
    assert manifest["files"]["train"]["rows"] + manifest["files"]["val"]["rows"] == 12
    assert len(read(tmp_path / "g" / "train.parquet")) == manifest["files"]["train"]["rows"]


def test_verl_rlhf_dataset_reads_the_parquet(tmp_path):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from m3.model.tokenizer import build_qwen3_tokenizer

    rows = build_rows("healthcare", str(INPUTS["healthcare"]), 0, 0)[:4]
    write_parquet(rows, tmp_path / "hc.parquet")
    cfg = OmegaConf.create(
        {
            "max_prompt_length": 4096,
            "cache_dir": str(tmp_path / "cache"),
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
        }
    )
    ds = RLHFDataset(str(tmp_path / "hc.parquet"), build_qwen3_tokenizer(), cfg)
    assert len(ds) == 4
    item = ds[0]
    assert item["raw_prompt"] == rows[0]["prompt"] and item["data_source"] == "m3_healthcare"
