"""Stage-1 data preparation: verl parquet files for the three experts (row builders: m3.expert_data).

    python -m stage1_expert_rl.data --expert inquiry --input data/agentclinic_medqa.jsonl --out DIR
    python -m stage1_expert_rl.data --expert healthcare --input data/healthbench_sample30.jsonl --out DIR
    python -m stage1_expert_rl.data --expert general --out DIR [--input prompts.jsonl] [--n 2000]

Writes DIR/train.parquet, DIR/val.parquet (split by `--seed`, `--val-fraction`) and DIR/manifest.json
(row counts and the sha256 data hash of each file, for the registry's lineage tags).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from eval.healthbench.data import load_examples
from m3.clinic.cases import load_cases
from m3.expert_data import (  # noqa: F401  (re-exported for callers of this module)
    EXPERTS,
    constraints_of,
    data_hash,
    general_rows,
    generate_general,
    healthcare_rows,
    inquiry_rows,
    load_general,
    split_rows,
    write_parquet,
)


def build_rows(expert: str, input_path: str | None, n: int, seed: int) -> list[dict]:
    if expert == "inquiry":
        if input_path is None:
            raise ValueError("--expert inquiry needs --input CASES.jsonl (e.g. data/agentclinic_medqa.jsonl)")
        return inquiry_rows(load_cases(input_path), seed)
    if expert == "healthcare":
        if input_path is None:
            raise ValueError("--expert healthcare needs --input a HealthBench-format JSONL")
        return healthcare_rows(load_examples(input_path))
    if expert == "general":
        return general_rows(load_general(input_path) if input_path else generate_general(n, seed))
    raise ValueError(f"--expert {expert!r}: use one of {EXPERTS}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--expert", required=True, choices=EXPERTS)
    p.add_argument("--input", default=None, help="cases / HealthBench / general-prompt JSONL")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--n", type=int, default=2000, help="general prompts to generate without --input")
    args = p.parse_args(argv)
    rows = build_rows(args.expert, args.input, args.n, args.seed)
    train, val = split_rows(rows, args.val_fraction, args.seed)
    out = Path(args.out)
    manifest: dict[str, Any] = {"expert": args.expert, "input": args.input, "seed": args.seed, "files": {}}
    for name, part in (("train", train), ("val", val)):
        if part:
            manifest["files"][name] = {
                "rows": len(part),
                "sha256": write_parquet(part, out / f"{name}.parquet"),
            }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(manifest))
    return manifest


if __name__ == "__main__":
    main()
