"""Stage-1 learning check: SPAR vs plain GRPO on the global reward, inquiry expert, small preset (CPU).

    python benchmarks/spar_learning_check.py      # 3 seeds x {spar, grpo}, 8 steps: ~40 s/step on 2 idle cores
    python benchmarks/spar_learning_check.py --steps 20 --jobs 1 --seeds 0 1 2 3

What runs: the `small` preset (m3.model.tiny, seed 0) is the base model of every run. Each run composes
`configs/stage1.yaml` (expert=inquiry, pipeline=false) with the sizes below, builds the rows with
`stage1_expert_rl.train.build_rows` and runs the same loop as `train.main`'s non-pipeline branch:
`LocalEngine.rollout` of `prompts_per_step` cases drawn from `n_prompts`, then `LocalEngine.update`
(the m3_consultation agent loop, the offline patient simulator and stage verifiers, R_global from
`m3.rl.rewards`, verl's gspo loss). The two arms differ only in `rl.consultation_estimator`: `spar`
(step-penalised advantages) or `grpo` (the paper's ablation: GRPO on the unpenalised R_global).
Seeds are `rl.seed` (sampling, simulator RNG, server seed) on the same base weights.
The pipeline is off so each rollout is a whole consultation and R_global is comparable across
steps (with the pipeline a step's mean mixes stages). MLflow and the registry are not touched.

Reported per arm: R_global at step 0 (the rollouts of the initial policy) and over the last
`--last` steps, the seed spread (std over seeds), and the repeated-question rate = the fraction of
inquiry doctor steps whose `step_violations` (agent loop extra_fields) contain repeated_question,
plus every violation kind per step. Writes benchmarks/spar_learning_check.json (per step, per
run), benchmarks/spar_learning_check.png and prints a markdown table.
Limits: a random-init 25M model emits random tokens; with the offline judges its rewards are
almost always 0, so a flat curve here says nothing about SPAR on a real policy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages
KINDS = ("repeated_question", "unsafe_advice", "multiple_questions", "rigid_template")
METHODS = ("spar", "grpo")


def step_stats(trajs) -> dict[str, float]:
    """Per-step figures from the trajectories: rewards and violation rates (from the agent loop's
    extra_fields["step_violations"] / ["step_stages"], one list per doctor step)."""
    steps = [
        (st, {v["kind"] for v in vs})
        for t in trajs
        for st, vs in zip(t.fields["step_stages"], t.fields["step_violations"], strict=True)
    ]
    inquiry = [kinds for st, kinds in steps if st == "inquiry"]
    groups: dict[str, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.uid, []).append(t.reward)
    out = {
        "reward_mean": statistics.fmean(t.reward for t in trajs),
        "nonzero_reward_frac": sum(t.reward > 0 for t in trajs) / len(trajs),
        # a group whose rewards are all equal gets zero advantage under both estimators: no signal
        "signal_group_frac": len({u for u, rs in groups.items() if len(set(rs)) > 1}) / len(groups),
        "repeat_rate_inquiry": sum("repeated_question" in k for k in inquiry) / len(inquiry)
        if inquiry
        else 0.0,
        "inquiry_steps": len(inquiry),
        "any_violation_rate": sum(bool(k) for _, k in steps) / len(steps) if steps else 0.0,
    }
    for kind in KINDS:
        out[f"rate/{kind}"] = sum(kind in k for _, k in steps) / len(steps) if steps else 0.0
    for g in ("g_inquiry", "g_ddx", "g_lab", "g_diagnosis"):
        out[g] = statistics.fmean(float(t.extra[g]) for t in trajs)
    return out


def worker(args) -> None:
    """One run (method, seed): writes a JSON list of per-step dicts to args.out."""
    import random

    import torch

    torch.set_num_threads(1)
    from m3.config import compose
    from m3.rl.engine import LocalEngine
    from stage1_expert_rl import train

    cfg = compose(
        "stage1",
        [
            "expert=inquiry",
            "pipeline=false",
            f"n_prompts={args.n_prompts}",
            f"prompts_per_step={args.prompts_per_step}",
            f"rl.group_size={args.group_size}",
            f"rl.max_new_tokens={args.max_new_tokens}",
            f"rl.lr={args.lr}",
            f"rl.seed={args.seed}",
            f"rl.consultation_estimator={args.method}",
        ],
    )
    rows, _ = train.build_rows(cfg)
    for r in rows:  # fewer inquiry turns than the default 10: the budget (module docstring)
        r["extra_info"]["episode"] = {"max_inquiry_turns": args.max_inquiry_turns}
    engine = LocalEngine(args.model, cfg.rl, Path(args.out).parent / f"ckpt-{args.method}-{args.seed}")
    rng = random.Random(cfg.rl.seed)
    history = []
    while engine.step < args.steps:
        t0 = time.time()
        trajs = engine.rollout(rng.sample(rows, min(cfg.prompts_per_step, len(rows))))
        metrics = engine.update(trajs)
        history.append(
            {
                "step": engine.step - 1,
                **step_stats(trajs),
                "pg_loss": metrics["pg_loss"],
                "grad_norm": metrics["grad_norm"],
                "adv_abs_mean": metrics["adv_abs_mean"],
                "seconds": time.time() - t0,
            }
        )
        print(
            f"[{args.method} seed {args.seed}] step {engine.step}/{args.steps} "
            f"R={history[-1]['reward_mean']:.4f} repeat={history[-1]['repeat_rate_inquiry']:.3f} "
            f"{history[-1]['seconds']:.0f}s",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(history))


def summarise(runs: dict, last: int) -> list[dict]:
    """One row per method: step-0 and last-`last`-steps means over seeds, with the seed std."""
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
    rows = []
    for method in METHODS:
        hs = [h for (m, _), h in sorted(runs.items()) if m == method]
        if not hs:
            continue
        first = [h[0]["reward_mean"] for h in hs]
        tail = [statistics.fmean(x["reward_mean"] for x in h[-last:]) for h in hs]
        rep0 = [h[0]["repeat_rate_inquiry"] for h in hs]
        rep1 = [statistics.fmean(x["repeat_rate_inquiry"] for x in h[-last:]) for h in hs]
        any0 = [h[0]["any_violation_rate"] for h in hs]
        any1 = [statistics.fmean(x["any_violation_rate"] for x in h[-last:]) for h in hs]
        delta = [b - a for a, b in zip(first, tail, strict=True)]
        rows.append(
            {
                "method": method,
                "seeds": len(hs),
                "steps": len(hs[0]),
                "r0": statistics.fmean(first),
                "r0_sd": sd(first),
                "r_last": statistics.fmean(tail),
                "r_last_sd": sd(tail),
                "delta": statistics.fmean(delta),
                "delta_sd": sd(delta),
                "repeat0": statistics.fmean(rep0),
                "repeat_last": statistics.fmean(rep1),
                "any0": statistics.fmean(any0),
                "any_last": statistics.fmean(any1),
                "nonzero_frac": statistics.fmean(x["nonzero_reward_frac"] for h in hs for x in h),
                "signal_frac": statistics.fmean(x["signal_group_frac"] for h in hs for x in h),
                **{f"rate/{k}": statistics.fmean(x[f"rate/{k}"] for h in hs for x in h) for k in KINDS},
                "sec_per_step": statistics.fmean(x["seconds"] for h in hs for x in h),
            }
        )
    return rows


def markdown(rows: list[dict], last: int) -> str:
    head = (
        f"| estimator | seeds x steps | R_global step 0 | R_global last {last} steps | change (mean ± sd over seeds) "
        "| repeated-question rate, inquiry steps: step 0 -> last | any violation: step 0 -> last "
        "| rollouts with R>0 | groups with a reward spread | s/step |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['method']} | {r['seeds']} x {r['steps']} | {r['r0']:.4f} ± {r['r0_sd']:.4f} "
        f"| {r['r_last']:.4f} ± {r['r_last_sd']:.4f} | {r['delta']:+.4f} ± {r['delta_sd']:.4f} "
        f"| {r['repeat0']:.3f} -> {r['repeat_last']:.3f} | {r['any0']:.3f} -> {r['any_last']:.3f} "
        f"| {100 * r['nonzero_frac']:.1f}% | {100 * r['signal_frac']:.1f}% | {r['sec_per_step']:.0f} |\n"
        for r in rows
    )
    kinds = "\nViolation rates per kind (fraction of all doctor steps, all runs and steps): " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{k} {r[f'rate/{k}']:.3f}" for k in KINDS) for r in rows
    )
    return head + body + kinds + "\n"


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for method, color in zip(METHODS, ("#4C72B0", "#C44E52"), strict=True):
        hs = [h for (m, _), h in sorted(runs.items()) if m == method]
        if not hs:
            continue
        n = min(len(h) for h in hs)
        for ax, key in zip(axes, ("reward_mean", "repeat_rate_inquiry"), strict=True):
            y = np.array([[x[key] for x in h[:n]] for h in hs])
            mu, sd = y.mean(0), y.std(0)
            style = (
                {"lw": 3.5, "alpha": 0.6} if method == "spar" else {"ls": "--"}
            )  # coinciding curves stay visible
            ax.plot(
                range(n), mu, marker="o", color=color, label=f"{method} (mean of {len(hs)} seeds)", **style
            )
            ax.fill_between(range(n), mu - sd, mu + sd, color=color, alpha=0.2)
    axes[0].set_title("R_global per step (mean ± sd over seeds)")
    axes[1].set_title("repeated-question rate, inquiry steps")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--last", type=int, default=3, help="steps averaged at the end")
    p.add_argument("--n-prompts", type=int, default=2)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--max-inquiry-turns", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    p.add_argument("--out-dir", default="benchmarks", help="relative to the repo root unless absolute")
    p.add_argument(
        "--replot", metavar="JSON", help="only redraw the plot and table from a previous run's JSON"
    )
    # internal: one run in a subprocess
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        runs = {tuple(k.rsplit("-", 1)): h for k, h in saved["runs"].items()}
        runs = {(m, int(s)): h for (m, s), h in runs.items()}
        plot(runs, REPO / args.out_dir / "spar_learning_check.png")
        print(markdown(saved["summary"], saved["args"]["last"]))
        return 0

    from m3.model.tiny import write_tiny_checkpoint

    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="spar_check_"))
    model = write_tiny_checkpoint(tmp / "small", "small", 0)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_COMPILE_DISABLE": "1",
        # nothing is logged, but keep any accidental MLflow use out of the repo's store
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "M3_ARTIFACT_ROOT": str(tmp / "artifacts"),
    }
    sizes = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in (
            "steps",
            "n_prompts",
            "prompts_per_step",
            "group_size",
            "max_new_tokens",
            "max_inquiry_turns",
            "lr",
        )
    ]
    queue = [(m, s) for s in args.seeds for m in args.methods]  # spar and grpo of a seed side by side
    running: list[tuple[tuple[str, int], subprocess.Popen]] = []
    while queue or running:
        while queue and len(running) < args.jobs:
            m, s = queue.pop(0)
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                f"--method={m}",
                f"--seed={s}",
                f"--model={model}",
                f"--out={tmp / f'{m}-{s}.json'}",
                *sizes,
            ]
            running.append(((m, s), subprocess.Popen(cmd, env=env, cwd=REPO)))
        time.sleep(2)
        for item in [r for r in running if r[1].poll() is not None]:
            running.remove(item)
            if item[1].returncode != 0:
                raise RuntimeError(f"run {item[0]} failed with exit code {item[1].returncode}")
    runs = {(m, s): json.loads((tmp / f"{m}-{s}.json").read_text()) for m in args.methods for s in args.seeds}
    shutil.rmtree(tmp)  # the runs' checkpoints (model + AdamW state each)
    rows = summarise(runs, args.last)
    out = REPO / args.out_dir  # an absolute --out-dir stays absolute
    out.mkdir(parents=True, exist_ok=True)
    (out / "spar_learning_check.json").write_text(
        json.dumps(
            {
                "args": {  # paths as given (repo-relative by default): the file is committed
                    k: v
                    for k, v in vars(args).items()
                    if k not in ("worker", "method", "seed", "model", "out")
                },
                "summary": rows,
                "runs": {f"{m}-{s}": h for (m, s), h in runs.items()},
                "wall_seconds": time.time() - t0,
            },
            indent=1,
        )
    )
    plot(runs, out / "spar_learning_check.png")
    print(markdown(rows, args.last))
    print(f"wall {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
