"""`make stage2 SCALE=cluster DRY_RUN=1`: the rows are written, and the three vLLM teacher commands and
the validated verl SFT command are printed, with the registered checkpoints' paths in them."""

from __future__ import annotations

import json
import shlex

from omegaconf import OmegaConf

from m3 import registry
from m3.config import compose
from m3.data.prompts import DOMAINS
from m3.rl.verl_config import compose_verl_base
from stage2_distill import train, verl_sft


def test_cluster_dry_run_prints_teacher_jobs_and_the_validated_sft_job(
    mlflow_store, tiny_dir, tmp_path, capsys
):
    registry.publish(tiny_dir, "m3-base", stage="base")
    for d in DOMAINS:
        registry.publish(tiny_dir, f"m3-expert-{d}", stage="stage1")
    out = tmp_path / "c"
    cfg = compose(
        "stage2",
        [
            "scale=cluster",
            "dry_run=true",
            "scale.backend=megatron",
            "model=qwen3_235b_a22b",
            "cluster_prompts_per_domain=3",
            "loss=fkl",
            "mixture.general=0.5",
            "scale.ray_address=http://head:8265",
            f"out_dir={out}",
        ],
    )
    train.main(cfg)
    lines = [shlex.split(x) for x in capsys.readouterr().out.splitlines() if x.startswith("ray job submit")]
    assert len(lines) == 4  # one teacher job per domain, then the student
    for d, cmd in zip(DOMAINS, lines[:3], strict=True):
        args = cmd[cmd.index("--") + 1 :]
        assert args[:3] == ["python3", "-m", "stage2_distill.vllm_teacher"]
        opts = dict(zip(args[3::2], args[4::2], strict=True))
        assert opts["--domain"] == d and opts["--teacher"] == str(
            registry.resolve(f"models:/m3-expert-{d}@candidate")
        )
        assert opts["--tensor-parallel-size"] == "8" and opts["--out"] == str(out / f"teacher-{d}.parquet")
        rows = [json.loads(x) for x in (out / f"rows-{d}.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all("episode" not in r["extra_info"] for r in rows)  # full consultations
    sft = lines[3]
    head = [
        "ray",
        "job",
        "submit",
        "--address",
        "http://head:8265",
        "--",
        "python3",
        "-m",
        "stage2_distill.verl_sft",
    ]
    assert sft[: len(head)] == head
    vcfg = compose_verl_base(verl_sft.BASE, sft[len(head) :])  # what the job composes
    verl_sft.validate(vcfg)
    assert vcfg.engine._target_.endswith("McoreEngineConfig") and vcfg.trainer.nnodes == 8
    assert vcfg.m3_distill.loss == "fkl" and vcfg.model.path == str(
        registry.resolve("models:/m3-base@candidate")
    )
    assert list(vcfg.data.train_files) == [str(out / f"teacher-{d}.parquet") for d in DOMAINS]
    assert OmegaConf.to_container(vcfg.data.mixture) == {"inquiry": 1.0, "healthcare": 1.0, "general": 0.5}
