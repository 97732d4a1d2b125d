"""The method's claims measured on the real model (SmolLM2-135M-Instruct): one runner, every ablation.

    python benchmarks/real_ablations.py spar        # SPAR vs GRPO vs global penalty, inquiry expert
    python benchmarks/real_ablations.py fact        # Fact-Aware vs rubric-only, healthcare expert
    python benchmarks/real_ablations.py dynamic     # dynamic vs static rubrics, healthcare expert
    python benchmarks/real_ablations.py clip        # Clip-FKL vs forward KL, stage 2
    python benchmarks/real_ablations.py mopd        # MOPD vs the stage-2 student
    python benchmarks/real_ablations.py all --seeds 0 1 --steps 6
    python benchmarks/real_ablations.py table       # print the tables of what has finished

Same code path as the pipeline: every arm is the stage's own entry point (`python -m
stage1_expert_rl ...`), the evaluations are `python -m eval.osce|healthbench|hallu`, all on the real
preset, in one MLflow store of their own (outputs/ablations/mlruns: the pipeline's registry is never
touched). Arms of one ablation share the data, the seeds, the steps and every size below, and differ
only in the ablated piece. The CPU size (stated in the tables): the top 6 of 30 layers train, rollouts
in batches of 16, temperature 0.7, two inquiry turns in RL, 32-64 new tokens per turn. Evaluations run
on held-out data (OSCE cases 40+, HealthBench records 16+, never trained on), greedy.

Resumable: each arm writes benchmarks/real/<ablation>/<arm>-s<seed>.json when it finishes and is
skipped when that file exists; the stage runs themselves resume from their checkpoints. The tables
(effect next to the seed spread) go to benchmarks/real/<ablation>.md; commit both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages
OUT = REPO / "benchmarks" / "real"
WORK = REPO / "outputs" / "ablations"
CPU_RL = [
    "model=smollm2_135m",
    "rl.rollout_batch=16",
    "rl.trainable_layers=6",
    "rl.temperature=0.7",
    "rl.lr=1.0e-5",
]
HELD_CASES, HELD_HB = 40, 16  # evaluation data starts here: never a training prompt


def env() -> dict[str, str]:
    e = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{WORK / 'mlruns' / 'mlflow.db'}",
             M3_ARTIFACT_ROOT=str(WORK / "mlruns" / "artifacts"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")  # fmt: skip
    return e


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(cmd)}   (log: {log.relative_to(REPO)})", flush=True)
    with log.open("a") as f:
        rc = subprocess.run(
            [sys.executable, "-m", *cmd], cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {rc}); see {log}")


def base() -> str:
    """m3-base@real of the ablation store (converted once from the wheel)."""
    run(["m3.cli", "base", "model=smollm2_135m"], WORK / "logs" / "base.log")
    return "models:/m3-base@real"


def heldout_files() -> tuple[Path, Path]:
    """OSCE cases and HealthBench records nobody trains on (after HELD_CASES / HELD_HB)."""
    cases = (REPO / "data" / "agentclinic_medqa.jsonl").read_text().splitlines()[HELD_CASES:]
    hb = (REPO / "data" / "healthbench_sample30.jsonl").read_text().splitlines()[HELD_HB:]
    (WORK / "heldout").mkdir(parents=True, exist_ok=True)
    (WORK / "heldout" / "cases.jsonl").write_text("\n".join(cases) + "\n")
    (WORK / "heldout" / "hb.jsonl").write_text("\n".join(hb) + "\n")
    return WORK / "heldout" / "cases.jsonl", WORK / "heldout" / "hb.jsonl"


def osce(model: Path, tag: str, n: int = 10) -> dict:
    """OSCE on held-out cases: stations, repeated-question rate, and R_global of each transcript
    against its case's clinical rubric (m3.clinic.rubric)."""
    from m3.clinic.rubric import r_global
    from m3.clinic.transcript import Transcript

    cases, _ = heldout_files()
    out = WORK / "eval" / f"osce-{tag}"
    run(["eval.osce", f"model={model}", f"cases={cases}", f"n_cases={n}", "episode.max_inquiry_turns=3",
         "generation.max_new_tokens=64", f"concurrent_cases={n}", f"out_dir={out}"], WORK / "logs" / f"osce-{tag}.log")  # fmt: skip
    rows = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    m = json.loads((out / "metrics.json").read_text())
    from m3.clinic.case_files import load_cases

    by_id = {c.case_id: c for c in load_cases(cases)}
    rg = [r_global(by_id[r["case_id"]], Transcript.from_dict(r["transcript"])) for r in rows]
    return {"osce_inquiry": m["station_inquiry"], "osce_lab": m["station_lab"], "osce_diagnosis": m["station_diagnosis"],
            "repeated_question_rate": m.get("violation_rate_repeated_question", 0.0),
            "r_global": statistics.fmean(rg)}  # fmt: skip


def healthbench(model: Path, tag: str, n: int = 14) -> dict:
    _, hb = heldout_files()
    out = WORK / "eval" / f"hb-{tag}"
    run(["eval.healthbench", "run", f"model={model}", f"data={hb}", f"n_examples={n}", "generation.max_new_tokens=128",
         "generation.batch_size=16", f"out_dir={out}"], WORK / "logs" / f"hb-{tag}.log")  # fmt: skip
    return {"healthbench": json.loads((out / "summary.json").read_text())["value"]}


def hallu(model: Path, tag: str, n: int = 10) -> dict:
    _, hb = heldout_files()
    out = WORK / "eval" / f"hallu-{tag}"
    run(["eval.hallu", f"model={model}", f"data={hb}", f"n_examples={n}", "generation.max_new_tokens=128",
         "generation.batch_size=16", f"out_dir={out}"], WORK / "logs" / f"hallu-{tag}.log")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    return {"hallucination_rate": m["hallucination_rate"], "refuted_rate": m.get("refuted_rate"),
            "uncertain_rate": m.get("uncertain_rate")}  # fmt: skip


def stage1(expert: str, arm: str, seed: int, steps: int, extra: list[str]) -> Path:
    out = WORK / "runs" / f"{expert}-{arm}-s{seed}"
    turns = ["max_inquiry_turns=2", "pipeline=false", "rl.max_new_tokens=32", "rl.max_response_length=512"]
    args = ["stage1_expert_rl", f"expert={expert}", f"base={base()}", f"steps={steps}", "n_prompts=8",
            "prompts_per_step=2", "rl.group_size=4", f"rl.seed={seed}", *CPU_RL,
            *(turns if expert == "inquiry" else ["rl.max_new_tokens=64"]), *extra, f"out_dir={out}"]  # fmt: skip
    run(args, WORK / "logs" / f"{out.name}.log")
    return out / "model"


ARMS = {
    "spar": {"spar": ["rl.consultation_estimator=spar"], "grpo": ["rl.consultation_estimator=grpo"],
             "spar_global": ["rl.consultation_estimator=spar_global"]},
    "fact": {"fact_aware": ["+rl.reward_kwargs.fact_aware=true"], "rubric_only": ["+rl.reward_kwargs.fact_aware=false"]},
    "dynamic": {"dynamic": ["rubrics.dynamic=true", "rubrics.top_quantile=0.5"], "static": ["rubrics.dynamic=false"]},
}  # fmt: skip


def arm_result(ablation: str, arm: str, seed: int, steps: int) -> dict:
    """Train one arm (resumable) and evaluate it; {metric: value} plus the run's own history."""
    extra = ARMS[ablation][arm]
    if ablation == "spar":
        model = stage1("inquiry", arm, seed, steps, extra)
        return osce(model, f"spar-{arm}-s{seed}")
    model = stage1("healthcare", arm, seed, steps, extra)
    res = {**healthbench(model, f"{ablation}-{arm}-s{seed}"), **hallu(model, f"{ablation}-{arm}-s{seed}")}
    if ablation == "dynamic":
        pool = (
            json.loads((model.parent / "rubric_pool.json").read_text())
            if (model.parent / "rubric_pool.json").is_file()
            else {}
        )
        res["pool_events"] = [
            {k: e[k] for k in ("event", "item", "step", "epoch", "why")} for e in pool.get("history", [])
        ]
    return res


def base_result(ablation: str) -> dict:
    """The untrained base on the same evaluation (the reference row of every table)."""
    from m3 import registry

    os.environ.update(env())
    model = registry.resolve(base())
    return (
        osce(model, "base") if ablation == "spar" else {**healthbench(model, "base"), **hallu(model, "base")}
    )


def run_ablation(ablation: str, seeds: list[int], steps: int) -> None:
    d = OUT / ablation
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "base.json").is_file():
        (d / "base.json").write_text(json.dumps(base_result(ablation), indent=1))
    for seed in seeds:
        for arm in ARMS[ablation]:
            path = d / f"{arm}-s{seed}.json"
            if path.is_file():
                continue
            t0 = time.time()
            res = arm_result(ablation, arm, seed, steps)
            res |= {"arm": arm, "seed": seed, "steps": steps, "seconds": round(time.time() - t0)}
            path.write_text(json.dumps(res, indent=1))
    print(table(ablation))


def table(ablation: str) -> str:
    """Mean +- std over seeds per arm, next to the base, from the raw JSON files."""
    d = OUT / ablation
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("*-s*.json"))]
    if not rows:
        return f"{ablation}: no finished arm yet"
    base = json.loads((d / "base.json").read_text()) if (d / "base.json").is_file() else {}
    metrics = [
        k for k, v in rows[0].items() if isinstance(v, int | float) and k not in ("seed", "steps", "seconds")
    ]
    lines = [f"| arm | seeds | {' | '.join(metrics)} |", "|---|---|" + "---|" * len(metrics)]
    if base:
        lines.append(
            "| base (untrained) | - | "
            + " | ".join(f"{base.get(k, float('nan')):.4g}" for k in metrics)
            + " |"
        )
    for arm in ARMS.get(ablation, {}):
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for k in metrics:
            vals = [r[k] for r in rs if isinstance(r.get(k), int | float)]
            sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            cells.append(f"{statistics.fmean(vals):.4g} +- {sd:.2g}")
        lines.append(f"| {arm} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (OUT / f"{ablation}.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ablation", choices=[*ARMS, "all", "table"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    if args.ablation == "table":
        for a in ARMS:
            print(f"## {a}\n{table(a)}\n")
        return 0
    for a in ARMS if args.ablation == "all" else [args.ablation]:
        run_ablation(a, args.seeds, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
