"""The method's claims measured on the real model (SmolLM2-135M-Instruct): one runner, every ablation.

    python benchmarks/real_ablations.py spar        # SPAR vs GRPO vs global penalty, inquiry expert
    python benchmarks/real_ablations.py fact        # Fact-Aware vs rubric-only, healthcare expert
    python benchmarks/real_ablations.py dynamic     # dynamic vs static rubrics, healthcare expert
    python benchmarks/real_ablations.py clip        # Clip-FKL vs forward KL, stage 2 (teachers: s0 experts)
    python benchmarks/real_ablations.py mopd        # MOPD vs the stage-2 student it starts from
    python benchmarks/real_ablations.py gate        # gated vs ungated Eagle3 (draft_gate_ablation.py)
    python benchmarks/real_ablations.py w4          # W4 vs float (quant_memory_quality.py)
    python benchmarks/real_ablations.py all --seeds 0 1 --steps 4
    python benchmarks/real_ablations.py table       # rewrite the tables and plots from the raw JSON

Same code path as the pipeline: every arm is the stage's own entry point (`python -m
stage1_expert_rl ...`), the evaluations are `python -m eval.osce|healthbench|hallu`, all on the real
preset, in one MLflow store of their own (outputs/ablations/mlruns: the pipeline's registry is never
touched; `M3_ABLATIONS_WORK=DIR` gives a second concurrent runner a store of its own). Arms of one
ablation share the data, the seeds, the steps and every size below, and differ
only in the ablated piece. The CPU size (stated in each table): the top 6 of 30 layers train, rollouts
in batches of 16 at temperature 0.7, 8 training prompts (2 per step, 4 samples each), two inquiry
turns in RL, 32-64 new tokens per turn. Evaluations are greedy on held-out data nobody trains on:
OSCE cases 40+ (10 cases, 3 inquiry turns), HealthBench-sample records 16+ (14), and each stage's own
held-out prompts (stage 1: 4 prompts' reward before/after; stage 2/3: per-domain teacher samples).
Judges, simulator and fact verifier are the offline ones (deterministic, no network).

Shared arms are run once: `dynamic`'s static arm is `fact`'s fact_aware arm (the same config), and
stage 2's teachers are the seed-0 experts of `spar` (inquiry, SPAR), `fact` (healthcare, Fact-Aware)
and one general expert; `mopd` starts from each seed's Clip-FKL student.

Resumable: each arm writes benchmarks/real/<ablation>/<arm>-s<seed>.json when it finishes and is
skipped when that file exists; the stage runs themselves resume from their checkpoints. The tables
(mean +- std over seeds, next to the untrained reference) go to benchmarks/real/<ablation>.md and a
plot to benchmarks/real/<ablation>.png; commit them with the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages
OUT = REPO / "benchmarks" / "real"
# M3_ABLATIONS_WORK: a store of its own per concurrent runner (two ablations at once, one thread each)
WORK = Path(os.environ.get("M3_ABLATIONS_WORK", REPO / "outputs" / "ablations")).resolve()
CPU_RL = [
    "model=smollm2_135m",
    "rl.rollout_batch=16",
    "rl.trainable_layers=6",
    "rl.temperature=0.7",
    "rl.lr=1.0e-5",
]
HELD_CASES, HELD_HB = 40, 16  # evaluation data starts here: never a training prompt
SIZE = (
    "SmolLM2-135M-Instruct float32 on 2 CPU cores; top 6/30 layers train; {steps} steps x 2 prompts x 4 "
    "samples (stage 1), temperature 0.7; greedy evaluation on held-out data, offline judges"
)


def env() -> dict[str, str]:
    return dict(
        os.environ,
        MLFLOW_TRACKING_URI=f"sqlite:///{WORK / 'mlruns' / 'mlflow.db'}",
        M3_ARTIFACT_ROOT=str(WORK / "mlruns" / "artifacts"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )


def run(cmd: list[str], log: Path, script: bool = False) -> None:
    """`python -m cmd...` (or `python cmd...` with script=True), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"$ {' '.join(cmd)}   (log: {log.relative_to(REPO)})", flush=True)
    argv = [sys.executable, *([] if script else ["-m"]), *cmd]
    with log.open("a") as f:
        rc = subprocess.run(argv, cwd=REPO, env=env(), stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {rc}); see {log}")


def base() -> str:
    """m3-base@real of the ablation store (converted once from the wheel)."""
    run(["m3.cli", "base", "model=smollm2_135m"], WORK / "logs" / "base.log")
    return "models:/m3-base@real"


def base_dir() -> Path:
    from m3 import registry

    os.environ.update(env())
    return Path(registry.resolve(base()))


def heldout_files() -> tuple[Path, Path]:
    """OSCE cases and HealthBench records nobody trains on (after HELD_CASES / HELD_HB)."""
    cases = (REPO / "data" / "agentclinic_medqa.jsonl").read_text().splitlines()[HELD_CASES:]
    hb = (REPO / "data" / "healthbench_sample30.jsonl").read_text().splitlines()[HELD_HB:]
    (WORK / "heldout").mkdir(parents=True, exist_ok=True)
    (WORK / "heldout" / "cases.jsonl").write_text("\n".join(cases) + "\n")
    (WORK / "heldout" / "hb.jsonl").write_text("\n".join(hb) + "\n")
    return WORK / "heldout" / "cases.jsonl", WORK / "heldout" / "hb.jsonl"


# --- evaluations -------------------------------------------------------------------------------
def osce(model: Path, tag: str, n: int = 10) -> dict:
    """OSCE on held-out cases: stations, repeated-question rate, and R_global of each transcript
    against its case's clinical rubric (m3.clinic.rubric)."""
    from m3.clinic.case_files import load_cases
    from m3.clinic.rubric import r_global
    from m3.clinic.transcript import Transcript

    cases, _ = heldout_files()
    out = WORK / "eval" / f"osce-{tag}"
    run(["eval.osce", f"model={model}", f"cases={cases}", f"n_cases={n}", "episode.max_inquiry_turns=3",
         "generation.max_new_tokens=64", f"concurrent_cases={n}", f"out_dir={out}"], WORK / "logs" / f"osce-{tag}.log")  # fmt: skip
    rows = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    m = json.loads((out / "metrics.json").read_text())
    by_id = {c.case_id: c for c in load_cases(cases)}
    rg = [r_global(by_id[r["case_id"]], Transcript.from_dict(r["transcript"])) for r in rows]
    return {
        "osce_inquiry": m["station_inquiry"],
        "osce_diagnosis": m["station_diagnosis"],
        # metrics.json lists only the violation kinds that occurred: absent = none in any step
        "osce_repeated_question_rate": m.get("violation_rate_repeated_question", 0.0),
        "osce_r_global": statistics.fmean([x for x in rg if x is not None] or [0.0]),
    }


def healthbench(model: Path, tag: str, n: int = 14) -> dict:
    _, hb = heldout_files()
    out = WORK / "eval" / f"hb-{tag}"
    run(["eval.healthbench", "run", f"model={model}", f"data={hb}", f"n_examples={n}", "generation.max_new_tokens=128",
         "generation.batch_size=16", f"out_dir={out}"], WORK / "logs" / f"hb-{tag}.log")  # fmt: skip
    return {"healthbench": json.loads((out / "summary.json").read_text())["value"]}


def hallu(model: Path, tag: str, n: int = 14) -> dict:
    _, hb = heldout_files()
    out = WORK / "eval" / f"hallu-{tag}"
    run(["eval.hallu", f"model={model}", f"data={hb}", f"n_examples={n}", "generation.max_new_tokens=128",
         "generation.batch_size=16", f"out_dir={out}"], WORK / "logs" / f"hallu-{tag}.log")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    return {"hallucination_rate": m["hallucination_rate"], "refuted_rate": m["refuted_rate"],
            "uncertain_rate": m["uncertain_rate"], "n_claims": m["n_claims"]}  # fmt: skip


def health_evals(model: Path, tag: str) -> dict:
    return {**healthbench(model, tag), **hallu(model, tag)}


# --- stage runs -----------------------------------------------------------------------------------
def stage1(expert: str, tag: str, seed: int, steps: int, extra: list[str]) -> Path:
    """One expert run (resumable from its checkpoint); returns its output directory."""
    out = WORK / "runs" / f"{expert}-{tag}-s{seed}"
    turns = ["max_inquiry_turns=2", "pipeline=false", "rl.max_new_tokens=32", "rl.max_response_length=512"]
    args = ["stage1_expert_rl", f"expert={expert}", f"base={base()}", f"steps={steps}", "n_prompts=8",
            "heldout_prompts=4", "prompts_per_step=2", "rl.group_size=4", f"rl.seed={seed}", *CPU_RL,
            *(turns if expert == "inquiry" else ["rl.max_new_tokens=64"]), *extra, f"out_dir={out}",
            f"summary_out={out / 'summary.json'}"]  # fmt: skip
    run(args, WORK / "logs" / f"{out.name}.log")
    return out


def stage1_metrics(out: Path) -> dict:
    """Held-out reward before/after (greedy, the run's own reward) and the training-time violation
    rate (mean over steps; inquiry only) from the run's files."""
    held = json.loads((out / "heldout.json").read_text())
    hist = json.loads((out / "history.json").read_text())
    res = {"heldout_reward_before": held["before"], "heldout_reward_after": held["after"]}
    viol = [h["violation_rate"] for h in hist if "violation_rate" in h]
    if viol:
        res["train_violation_rate"] = statistics.fmean(viol)
        res["train_violation_rate_per_step"] = viol
    res["train_reward_first_last"] = [hist[0]["reward_mean"], hist[-1]["reward_mean"]]
    # per step: what a reward change did to GRPO's group-normalised advantages (equal = same update)
    res["train_reward_per_step"] = [h["reward_mean"] for h in hist]
    res["train_adv_abs_mean_per_step"] = [h.get("adv_abs_mean") for h in hist]
    return res


def registered(out: Path, name: str) -> str:
    """The registry URI of the version a run registered (from its summary row, "... (vN)" / "vN"):
    lineage tags need registry URIs, so runs that feed later stages are passed as these."""
    value = json.loads((out / "summary.json").read_text())["value"]
    version = re.search(r"v(\d+)", value).group(1)
    return f"models:/{name}/{version}"


def teachers(steps: int) -> dict[str, str]:
    """The seed-0 experts: inquiry from `spar`'s SPAR arm, healthcare from `fact`'s Fact-Aware arm
    (trained here if those ablations have not run) and one general expert."""
    specs = {
        "inquiry": ("spar", ["rl.consultation_estimator=spar"]),
        "healthcare": ("fact_aware", ["+rl.reward_kwargs.fact_aware=true"]),
        "general": ("general", []),
    }
    runs = {}
    for d, (tag, extra) in specs.items():
        out = WORK / "runs" / f"{d}-{tag}-s0"
        # a teacher once registered is kept: a config field added later (rl.request_seeds) changes the
        # config hash, and retraining would give later seeds other teachers than the first ones had
        runs[d] = out if (out / "summary.json").is_file() else stage1(d, tag, 0, steps, extra)
    return {d: registered(out, f"m3-expert-{d}") for d, out in runs.items()}


def stage2(loss: str, seed: int, steps: int) -> Path:
    """Distil the s0 experts into the base; arms share one teacher-data file (generated once)."""
    out = WORK / "runs" / f"distill-{loss}-s{seed}"
    shared = WORK / "runs" / f"distill-teacher-data-s{seed}.parquet"
    if shared.is_file() and not (out / "teacher_data.parquet").is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared, out / "teacher_data.parquet")
    t = teachers(steps)
    run(["stage2_distill", "model=smollm2_135m", f"init={base()}", *[f"teachers.{d}={p}" for d, p in t.items()],
         f"loss={loss}", f"seed={seed}", "steps=16", "batch_size=4", "lr=2.0e-5", "trainable_layers=6",
         "prompts_per_domain=6", "heldout_per_domain=2", "rollout.rollout_batch=16", "rollout.temperature=0.7",
         "rollout.max_new_tokens=48", f"rollout.seed={seed}", "max_inquiry_turns=2", f"out_dir={out}",
         f"summary_out={out / 'summary.json'}"], WORK / "logs" / f"{out.name}.log")  # fmt: skip
    if not shared.is_file():
        shutil.copy(out / "teacher_data.parquet", shared)
    return out


def eval_pair(hist: Path) -> dict:
    """{metric_before, metric_after} of a stage 2/3 history.json's held-out evaluation."""
    h = json.loads(hist.read_text())
    res = {}
    for when in ("before", "after"):
        for k, v in h[f"eval_{when}"].items():
            res[f"{k.removeprefix('eval/').replace('/', '_')}_{when}"] = v
    return res


# --- the ablations --------------------------------------------------------------------------------
def spar_arm(arm: str):
    def go(seed: int, steps: int) -> dict:
        out = stage1("inquiry", arm, seed, steps, [f"rl.consultation_estimator={arm}"])
        return {**stage1_metrics(out), **osce(out / "model", f"spar-{arm}-s{seed}")}

    return go


def fact_arm(arm: str):
    def go(seed: int, steps: int) -> dict:
        flag = "true" if arm == "fact_aware" else "false"
        out = stage1("healthcare", arm, seed, steps, [f"+rl.reward_kwargs.fact_aware={flag}"])
        res = stage1_metrics(out)
        if arm == "rubric_only":  # its held-out reward omits the fact term: not comparable, not shown
            res = {k: v for k, v in res.items() if not k.startswith("heldout_")}
        return {**res, **health_evals(out / "model", f"healthcare-{arm}-s{seed}")}

    return go


def rubric_arm(dynamic: bool, n_prompts: int = 8):
    """Healthcare expert, Fact-Aware on, static or dynamic rubrics. The pool admits items at epoch
    ends: with 8 prompts (2 a step) the 4 steps are one epoch and nothing admitted reaches training;
    with 4 prompts they are two epochs, so items admitted after epoch 1 shape steps 3-4."""
    tag = ("dynamic" if dynamic else "static") + ("" if n_prompts == 8 else f"_{n_prompts}p")

    def go(seed: int, steps: int) -> dict:
        extra = ["+rl.reward_kwargs.fact_aware=true", f"n_prompts={n_prompts}"]
        out = stage1("healthcare", tag, seed, steps, extra + (["rubrics.dynamic=true"] if dynamic else []))
        res = {**stage1_metrics(out), **health_evals(out / "model", f"healthcare-{tag}-s{seed}")}
        if not dynamic:
            return res
        pool = json.loads((out / "rubric_pool.json").read_text())
        events = [{k: e.get(k) for k in ("event", "item", "step", "epoch", "why")} for e in pool["history"]]
        if (out / "rubric_pool.png").is_file():  # the pool's history as a picture, beside the JSON
            shutil.copy(out / "rubric_pool.png", OUT / "dynamic" / f"pool-{tag}-s{seed}.png")
        n_admitted = sum(e["event"] == "admitted" for e in events)
        return res | {"n_admitted": n_admitted, "n_candidates": len(pool["items"]), "pool_events": events}

    return go


def clip_arm(loss: str):
    def go(seed: int, steps: int) -> dict:
        out = stage2(loss, seed, steps)
        return {**eval_pair(out / "history.json"), **health_evals(out / "model", f"distill-{loss}-s{seed}"),
                **osce(out / "model", f"distill-{loss}-s{seed}")}  # fmt: skip

    return go


def mopd_arm(seed: int, steps: int) -> dict:
    student = registered(stage2("clip_fkl", seed, steps), "m3-distill")
    out = WORK / "runs" / f"mopd-s{seed}"
    t = teachers(steps)
    run(["stage3_mopd", "model=smollm2_135m", f"student={student}", *[f"teachers.{d}={p}" for d, p in t.items()],
         "steps=4", "prompts_per_domain=3", "heldout_per_domain=2", "rl.group_size=2", f"rl.seed={seed}",
         "rl.rollout_batch=16", "rl.trainable_layers=6", "rl.temperature=0.7", "rl.optimizer=adamw",
         "rl.lr=1.0e-5", "rl.max_new_tokens=32", "rl.max_response_length=512", f"out_dir={out}",
         f"summary_out={out / 'summary.json'}"], WORK / "logs" / f"{out.name}.log")  # fmt: skip
    return {**eval_pair(out / "history.json"), **health_evals(out / "model", f"mopd-s{seed}"),
            **osce(out / "model", f"mopd-s{seed}")}  # fmt: skip


def stage2_student(seed: int, steps: int) -> dict:
    """MOPD's reference arm: the Clip-FKL student it starts from, on the same evaluations."""
    model = stage2("clip_fkl", seed, steps) / "model"
    return {**health_evals(model, f"distill-clip_fkl-s{seed}"), **osce(model, f"distill-clip_fkl-s{seed}")}


ARMS = {
    "spar": {a: spar_arm(a) for a in ("spar", "grpo", "spar_global")},
    "fact": {a: fact_arm(a) for a in ("fact_aware", "rubric_only")},
    "dynamic": {
        "dynamic": rubric_arm(True),
        "static": fact_arm("fact_aware"),
        "dynamic_4p": rubric_arm(True, 4),
        "static_4p": rubric_arm(False, 4),
    },
    "clip": {"clip_fkl": clip_arm("clip_fkl"), "fkl": clip_arm("fkl")},
    "mopd": {"stage2_student": stage2_student, "mopd": mopd_arm},
}
REFERENCE = {  # the untrained base on each ablation's evaluation (the first row of its table)
    "spar": lambda: osce(base_dir(), "base"),
    "fact": lambda: health_evals(base_dir(), "base"),
    "dynamic": lambda: health_evals(base_dir(), "base"),
    "clip": lambda: {**health_evals(base_dir(), "base"), **osce(base_dir(), "base")},
    "mopd": lambda: {**health_evals(base_dir(), "base"), **osce(base_dir(), "base")},
}
SHARED = {("dynamic", "static"): ("fact", "fact_aware")}  # the same run: reuse its result


def run_ablation(ablation: str, seeds: list[int], steps: int) -> None:
    d = OUT / ablation
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "base.json").is_file():
        (d / "base.json").write_text(json.dumps(REFERENCE[ablation](), indent=1))
    for seed in seeds:
        for arm, fn in ARMS[ablation].items():
            path = d / f"{arm}-s{seed}.json"
            if path.is_file():
                continue
            if (ablation, arm) in SHARED:
                other, other_arm = SHARED[ablation, arm]
                src = OUT / other / f"{other_arm}-s{seed}.json"
                if src.is_file():
                    path.write_text(json.dumps(json.loads(src.read_text()) | {"arm": arm}, indent=1))
                    continue
            t0 = time.time()
            res = fn(seed, steps)
            res |= {"arm": arm, "seed": seed, "steps": steps, "seconds": round(time.time() - t0)}
            path.write_text(json.dumps(res, indent=1))
    print(table(ablation))


def _numeric(rows: list[dict]) -> list[str]:
    skip = {"seed", "steps", "seconds"}
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if isinstance(v, int | float) and k not in skip and k not in keys]
    return keys


def table(ablation: str) -> str:
    """Mean +- std over seeds per arm, next to the base, from the raw JSON files; writes .md and .png."""
    d = OUT / ablation
    rows = [json.loads(p.read_text()) for p in sorted(d.glob("*-s*.json"))]
    if not rows:
        return f"{ablation}: no finished arm yet"
    ref = json.loads((d / "base.json").read_text()) if (d / "base.json").is_file() else {}
    metrics = _numeric(rows)
    head = f"| arm | seeds | minutes/arm | {' | '.join(metrics)} |"
    lines = [head, "|---|---|---|" + "---|" * len(metrics)]
    if ref:
        lines.append(
            "| base (untrained) | - | - | " + " | ".join(_cell([ref.get(k)]) for k in metrics) + " |"
        )
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in ARMS[ablation]:
        rs = [r for r in rows if r["arm"] == arm]
        if not rs:
            continue
        cells = [_cell([r.get(k) for r in rs]) for k in metrics]
        stats[arm] = {k: _mean_sd([r.get(k) for r in rs]) for k in metrics}
        mins = statistics.fmean(r["seconds"] for r in rs) / 60
        lines.append(
            f"| {arm} | {','.join(str(r['seed']) for r in rs)} | {mins:.0f} | " + " | ".join(cells) + " |"
        )
    steps = rows[0]["steps"]
    text = "\n".join(lines) + f"\n\nSize: {SIZE.format(steps=steps)}.\n"
    (OUT / f"{ablation}.md").write_text(text)
    _plot(ablation, stats, ref, metrics)
    return text


def gate_table() -> str:
    """Gated vs ungated acceptance length per seed, chain and tree, from benchmarks/real/gate/*.json;
    writes gate.md and gate.png (the gain per seed and setting, with the mean and seed std)."""
    rows = [r for p in sorted((OUT / "gate").glob("gate-s*.json")) for r in json.loads(p.read_text())["rows"]]
    if not rows:
        return "gate: no finished seed yet"
    lines = ["| seed | chain: ungated | gated | gain | tree: ungated | gated | gain | greedy identical |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    gains: dict[str, list[float]] = {"chain": [], "tree": []}
    for r in rows:
        chain = r["gated_acceptance"] - r["ungated_acceptance"]
        tree = r["gated_tree_acceptance"] - r["ungated_tree_acceptance"]
        gains["chain"].append(chain)
        gains["tree"].append(tree)
        same = r["identical_outputs"] and r["tree_identical_outputs"]
        lines.append(f"| {r['seed']} | {r['ungated_acceptance']:.3f} | {r['gated_acceptance']:.3f} | {chain:+.3f} | "
                     f"{r['ungated_tree_acceptance']:.3f} | {r['gated_tree_acceptance']:.3f} | {tree:+.3f} | {same} |")  # fmt: skip
    cell = {
        k: _cell([r[k] for r in rows])
        for k in (
            "ungated_acceptance",
            "gated_acceptance",
            "ungated_tree_acceptance",
            "gated_tree_acceptance",
        )
    }
    lines.append(f"| mean +- std | {cell['ungated_acceptance']} | {cell['gated_acceptance']} | {_cell(gains['chain'])} | "
                 f"{cell['ungated_tree_acceptance']} | {cell['gated_tree_acceptance']} | {_cell(gains['tree'])} | |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    (OUT / "gate.md").write_text(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for i, g in enumerate(gains.values()):
        ax.scatter([i] * len(g), g, color="#4c72b0", zorder=3)
        ax.errorbar([i + 0.15], [statistics.fmean(g)], yerr=[statistics.stdev(g) if len(g) > 1 else 0],
                    fmt="s", color="#dd8452", capsize=4)  # fmt: skip
    ax.axhline(0, color="grey", lw=1)
    ax.axhline(0.29, color="grey", ls="--", lw=1)
    ax.set_xticks([0, 1], ["chain (k=3)", "tree (topk 4, 8 tok)"])
    ax.set_ylabel("gated - ungated acceptance length")
    ax.set_title("gate gain per seed (dots), mean +- std; dashed: paper +0.29", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "gate.png", dpi=80)
    plt.close(fig)
    return text


def _mean_sd(vals: list) -> tuple[float, float]:
    v = [x for x in vals if isinstance(x, int | float)]
    if not v:
        return float("nan"), float("nan")
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else float("nan"))


def _cell(vals: list) -> str:
    m, sd = _mean_sd(vals)
    if m != m:  # nan: the metric does not apply to this arm
        return "-"
    return f"{m:.4g}" if sd != sd else f"{m:.4g} +- {sd:.2g}"


def _plot(ablation: str, stats: dict, ref: dict, metrics: list[str]) -> None:
    """One panel per metric: each arm's mean with its seed spread, the base as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(metrics)
    cols = min(n, 4)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols))
    )
    for ax, k in zip(getattr(axes, "flat", [axes]), metrics, strict=False):
        arms = [a for a in stats if stats[a][k][0] == stats[a][k][0]]
        means = [stats[a][k][0] for a in arms]
        errs = [0 if stats[a][k][1] != stats[a][k][1] else stats[a][k][1] for a in arms]
        ax.bar(arms, means, yerr=errs, capsize=4, color="#4c72b0")
        if isinstance(ref.get(k), int | float):
            ax.axhline(ref[k], ls="--", color="grey", lw=1)
        ax.set_title(k, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(getattr(axes, "flat", []))[n:]:
        ax.axis("off")
    fig.suptitle(f"{ablation}: mean +- seed std (dashed: untrained base)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / f"{ablation}.png", dpi=80)
    plt.close(fig)


def scripted(ablation: str, seeds: list[int]) -> None:
    """gate and w4 run their own benchmark scripts on the real model; raw JSON to benchmarks/real/."""
    OUT.mkdir(parents=True, exist_ok=True)
    if ablation == "gate":
        # one process per seed (resumable); chain k = 3 and an EAGLE-2 tree (topk 4, depth 3, 8 tokens)
        for seed in seeds:
            path = OUT / "gate" / f"gate-s{seed}.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                run(["benchmarks/draft_gate_ablation.py", "--target", str(base_dir()), "--seeds", str(seed),
                     "--steps", "200", "--prompts-per-domain", "12", "--heldout-per-domain", "4", "--k", "3",
                     "--tree-topk", "4", "--tree-tokens", "8", "--out", str(path)],
                    WORK / "logs" / f"gate-s{seed}.log", script=True)  # fmt: skip
    else:  # the calibration seeds not yet in w4.json, merged into it
        path = OUT / "w4.json"
        done = json.loads(path.read_text()) if path.is_file() else {}
        todo = [str(s) for s in seeds if f"real-s{s}" not in done]
        if todo:
            new = WORK / "quant" / "w4-new.json"
            run(["benchmarks/quant_memory_quality.py", "--presets", "real", "--seeds", *todo,
                 "--out", str(WORK / "quant"), "--json", str(new)], WORK / "logs" / "w4.log", script=True)  # fmt: skip
            path.write_text(json.dumps(done | json.loads(new.read_text()), indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ablation", choices=[*ARMS, "gate", "w4", "all", "table"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    if args.ablation == "table":
        for a in ARMS:
            print(f"## {a}\n{table(a)}\n")
        print(f"## gate\n{gate_table()}")
        return 0
    todo = [*ARMS, "gate", "w4"] if args.ablation == "all" else [args.ablation]
    for a in todo:
        if a in ARMS:
            run_ablation(a, args.seeds, args.steps)
        else:
            scripted(a, [*args.seeds, 2] if a == "gate" and len(args.seeds) < 3 else args.seeds)
            if a == "gate":
                print(gate_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
