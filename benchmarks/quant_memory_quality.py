"""W4A16 memory and quality, tiny and small presets side by side with the real Qwen3-235B-A22B shapes.

    python benchmarks/quant_memory_quality.py [--presets tiny small] [--out outputs/bench_quant]
    python benchmarks/quant_memory_quality.py --presets real --seeds 0 1 --json benchmarks/real/w4.json

`real` is SmolLM2-135M-Instruct (m3.model.real), quantized from its exact float32 weights
(gptq.dtype=float32; group 128 shrinks to 64, what divides its 576-wide inputs), one row per
calibration seed (`calibration.seed`: which self-generated answers calibrate GPTQ).

Builds each preset's checkpoint (seed 0), runs the quant stage on it (`quant.quantize.main` with the
defaults of configs/quant.yaml: 8 self-generated calibration prompts per domain, group 128 shrunk to
what divides the widths, 4 HealthBench-sample records, offline judge) in a throw-away MLflow store,
and prints one markdown table: W4 bytes as served (BF16 scales and unquantized tensors, the formula
that the stored checkpoint's measured bytes check at its own dtype) vs BF16, bits per weight, held-out
perplexity, KL(BF16 || W4), top-1 agreement, HealthBench-sample score of both; then the
formula's rows for Qwen3-235B-A22B.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--out", default="outputs/bench_quant")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration seeds")
    ap.add_argument("--json", default=None, help="also write the raw reports here")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlruns' / 'mlflow.db'}"
    os.environ["M3_ARTIFACT_ROOT"] = str(out / "mlruns" / "artifacts")

    from m3.config import compose
    from m3.model.tiny import write_tiny_checkpoint
    from quant import quantize
    from quant.report import real_shape_table

    rows = [
        "| model | group | params (M) | BF16 MB | W4 MB as served | % of BF16 | bits/weight | W4 MB stored (measured) | "
        "quantized share of params | PPL BF16 -> W4 | KL(BF16‖W4) nats | top-1 agree | "
        "HealthBench-sample BF16 / W4 | experts routed >= 1 token | wall s |",
        "|---" * 15 + "|",
    ]
    raw = {}
    for preset, seed in [(p, s) for p in args.presets for s in args.seeds]:
        over = []
        if preset == "real":
            from m3.model.real import convert

            ckpt = out / "real" / "model"
            if not (ckpt / "config.json").is_file():
                convert(ckpt)
            # float32 GPTQ (the exact weights); W4 costs 135M params ~0.26 nats, past the 0.05 guard
            over = ["gptq.dtype=float32", "eval.kl_tolerance=0.5", "calibration.max_new_tokens=48",
                    "calibration.batch_size=16"]  # fmt: skip
        else:
            ckpt = write_tiny_checkpoint(out / preset / "model", preset, 0)
        run = out / preset / f"run-s{seed}"
        t0 = time.time()
        quantize.main(
            compose("quant", [f"source={ckpt}", f"out_dir={run}", f"calibration.seed={seed}", *over])
        )
        rep = json.loads((run / "report.json").read_text())
        raw[f"{preset}-s{seed}"] = rep | {"wall_s": round(time.time() - t0)}
        s, q = rep["sizes"]["model"], rep["quality"]
        hb = (
            f"{rep['healthbench_bf16']['overall_score']:.3f} / {rep['healthbench_w4']['overall_score']:.3f}"
            f" (n={rep['healthbench_w4']['n']})"
            if "healthbench_w4" in rep
            else "-"
        )
        rows.append(
            f"| {preset} s{seed} | {rep['group_size']} | {s['params'] / 1e6:.2f} | {s['bytes_bf16'] / 1e6:.2f} "
            f"| {s['bytes_w4'] / 1e6:.2f} | {100 * s['ratio']:.1f} | {s['bits_per_weight']:.2f} "
            f"| {rep['sizes']['measured_bytes'] / 1e6:.2f} | {100 * s['params_quantized'] / s['params']:.1f}% "
            f"| {q['ppl_bf16']:.4g} -> {q['ppl_w4']:.4g} | {q['kl_mean']:.2e} | {q['top1_agreement']:.3f} "
            f"| {hb} | {rep['activation']['experts'] - len(rep['uncovered_experts'])}/{rep['activation']['experts']} "
            f"| {time.time() - t0:.0f} |"
        )
    print("\n".join(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(raw, indent=1))
    print()
    print(real_shape_table())


if __name__ == "__main__":
    main()
