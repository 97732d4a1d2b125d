"""Stage-2 ablation: Clip-Forward-KL vs forward KL on the `small` preset, same teacher data and steps (CPU).

    python benchmarks/stage2_ablation.py                       # ~12-15 min on 2 shared cores, 1 thread
    python benchmarks/stage2_ablation.py --seed 1 --tau 20 --out outputs/stage2_ablation_tau20.json

What runs: the `small` preset (m3.model.tiny, seed 0, ~25M parameters, random init) is m3-base and the
student's init. No trained experts exist offline, and stage-1 RL on a random-init model earns ~0
reward (benchmarks/spar_learning_check.py), so its "experts" would be the base. The three teachers are
instead made from the base so that they differ from the student in the two ways a real expert does:
  - perturbed: every weight matrix except the (tied) embedding gets W += sigma * std(W) * N(0, 1), with
    a different seed per domain (inquiry 1, healthcare 2, general 3): different preferred tokens;
  - sharpened: the final RMSNorm weight is multiplied by tau, so logits scale by tau (temperature
    1/tau): the base is nearly uniform over 151,936 tokens (entropy 11.9 nats); tau=10 teachers have
    ~9 nats on their own samples and are below the student's log-prob on ~10-15% of their tokens at
    init, so the clip has something to do; tau=20 teachers (0.1-0.9 nats) are far above the student on
    every token for the whole run, where Clip-FKL and forward KL coincide.
Both arms then run `stage2_distill.train.main` (the `make stage2` loop: teacher rollouts with log-probs
from the three registered teachers on their own domain's prompts, then mixture-weighted Clip-FKL or
forward-KL steps from the same init), in a temporary MLflow store. The teacher data is generated once
(arm clip_fkl) and copied to the other arm, so both see identical records (same data hash).

Evaluated per model (init, clip_fkl, fkl), on the held-out teacher records of each domain
(teacher-forced, at the teacher's response tokens): the student's mean log-prob of the teacher's token
(what `make stage2` logs), the exact forward KL(teacher || student) over the full vocabulary, the
overshoot fraction (held-out teacher tokens where log pi_student > log pi_teacher: what Clip-FKL
refuses to train further) and the student's entropy. Then a HealthBench sample with the offline judge
(`eval.healthbench`'s python API, examples not used as prompts) and an OSCE sample (`eval.osce`,
cases not used as prompts, 3 inquiry turns). HealthBench-Hard is not available offline.
Writes benchmarks/stage2_ablation.json and prints a markdown table.
Limits: the models are random-init and tiny; HealthBench/OSCE scores of babbling models under the
offline judge measure nothing clinical. The token-level figures are the informative part.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages
DOMAINS = ("inquiry", "healthcare", "general")
ARMS = ("clip_fkl", "fkl")


def make_teacher(base_dir: Path, out: Path, seed: int, sigma: float, tau: float) -> Path:
    """A perturbed, sharpened copy of the base (see the module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name:
                p.add_(sigma * p.std() * torch.randn(p.shape, generator=g))
        model.model.norm.weight.mul_(tau)  # logits x tau: the lm_head reads the normed hidden state
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def token_metrics(student, teacher, records: list[dict], chunk: int = 256) -> dict[str, float]:
    """Teacher-forced on held-out teacher records, over the teacher's response tokens (loss_mask 1):
    mean log pi_S(a), log pi_T(a), KL(T||S) = sum_v p_T (log p_T - log p_S), H(S), H(T), and the
    overshoot fraction mean 1(log pi_S(a) > log pi_T(a))."""
    import torch

    sums = dict.fromkeys(
        ("logp_student", "logp_teacher", "kl", "entropy_student", "entropy_teacher", "overshoot"), 0.0
    )
    n = 0
    with torch.no_grad():
        for r in records:
            ids = torch.tensor([r["prompt_ids"] + r["response_ids"]])
            p = len(r["prompt_ids"])
            pos = torch.tensor([p - 1 + j for j, m in enumerate(r["loss_mask"]) if m])  # predicts token pos+1
            if not len(pos):
                continue
            hs = student.model(input_ids=ids).last_hidden_state[0, pos]
            ht = teacher.model(input_ids=ids).last_hidden_state[0, pos]
            tgt = ids[0, pos + 1]
            for s in range(0, len(pos), chunk):
                ls = torch.log_softmax(hs[s : s + chunk] @ student.lm_head.weight.T, -1)
                lt = torch.log_softmax(ht[s : s + chunk] @ teacher.lm_head.weight.T, -1)
                t = tgt[s : s + chunk, None]
                a_s, a_t = ls.gather(1, t).squeeze(1), lt.gather(1, t).squeeze(1)
                sums["logp_student"] += float(a_s.sum())
                sums["logp_teacher"] += float(a_t.sum())
                sums["overshoot"] += float((a_s > a_t).sum())
                sums["kl"] += float((lt.exp() * (lt - ls)).sum())
                sums["entropy_student"] += float(-(ls.exp() * ls).sum())
                sums["entropy_teacher"] += float(-(lt.exp() * lt).sum())
            n += len(pos)
    return {k: v / max(n, 1) for k, v in sums.items()} | {"tokens": n}


def heldout_files(work: Path, skip: int, n_hb: int, n_osce: int) -> tuple[Path, Path]:
    """HealthBench records and OSCE cases after the first `skip` (those became teacher prompts)."""
    hb = (REPO / "data" / "healthbench_sample30.jsonl").read_text().splitlines()[skip : skip + n_hb]
    cases = (REPO / "data" / "agentclinic_medqa.jsonl").read_text().splitlines()[skip : skip + n_osce]
    (work / "hb.jsonl").write_text("\n".join(hb) + "\n")
    (work / "osce.jsonl").write_text("\n".join(cases) + "\n")
    return work / "hb.jsonl", work / "osce.jsonl"


def evaluate_model(name: str, model_dir: Path, teachers: dict, held: dict, files, work: Path, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from eval.healthbench.run import GenerationConfig, HealthBenchRunConfig
    from eval.healthbench.run import main as healthbench
    from eval.osce.run import DoctorGeneration, OsceRunConfig
    from eval.osce.run import main as osce
    from m3.clinic.episode import EpisodeConfig

    student = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    row = {d: token_metrics(student, teachers[d], held[d]) for d in DOMAINS}
    del student
    hb = healthbench(
        HealthBenchRunConfig(
            model=str(model_dir),
            data=str(files[0]),
            out_dir=str(work / f"hb-{name}"),
            n_bootstrap=200,
            generation=GenerationConfig(max_new_tokens=args.eval_tokens, batch_size=args.hb_examples),
        )
    )
    oc = osce(
        OsceRunConfig(
            model=str(model_dir),
            cases=str(files[1]),
            n_cases=args.osce_cases,
            out_dir=str(work / f"osce-{name}"),
            generation=DoctorGeneration(max_new_tokens=args.eval_tokens),
            episode=EpisodeConfig(max_inquiry_turns=3),
        )
    )
    row["healthbench"] = {
        "overall_score": hb["value"],
        "bootstrap_std": hb["bootstrap_std"],
        "n": hb["n_graded"],
    }
    row["osce"] = {
        k: oc["metrics"][k] for k in ("station_inquiry", "station_lab", "station_diagnosis", "ddx")
    }
    return row


def table(results: dict) -> str:
    lines = [
        "| model | domain | teacher-token log-prob | KL(T\\|\\|S) /token | overshoot frac | student entropy |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        for d in DOMAINS:
            m = row[d]
            lines.append(
                f"| {name} | {d} | {m['logp_student']:.3f} | {m['kl']:.3f} | {m['overshoot']:.3f} | "
                f"{m['entropy_student']:.3f} |"
            )
    for d in DOMAINS:  # the teacher itself: the ceiling of the log-prob column, its entropy for reference
        m = results["models"]["init"][d]
        lines.append(
            f"| teacher (reference) | {d} | {m['logp_teacher']:.3f} | 0 | - | {m['entropy_teacher']:.3f} |"
        )
    lines += [
        "",
        "| model | HealthBench sample (offline judge) | OSCE inquiry / lab / diagnosis / ddx |",
        "|---|---|---|",
    ]
    for name, row in results["models"].items():
        hb, oc = row["healthbench"], row["osce"]
        lines.append(
            f"| {name} | {hb['overall_score']:.3f} +- {hb['bootstrap_std']:.3f} (n={hb['n']}) | "
            + " / ".join(
                f"{oc[k]:.1f}" for k in ("station_inquiry", "station_lab", "station_diagnosis", "ddx")
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--prompts-per-domain", type=int, default=8)
    p.add_argument("--heldout", type=int, default=2, help="held-out teacher records per domain")
    p.add_argument("--max-new-tokens", type=int, default=32, help="teacher tokens per response / doctor turn")
    p.add_argument("--max-response-length", type=int, default=256, help="a whole teacher consultation")
    p.add_argument("--sigma", type=float, default=0.5, help="teacher weight perturbation (x per-tensor std)")
    p.add_argument("--tau", type=float, default=10.0, help="teacher logit sharpening factor")
    p.add_argument(
        "--seed", type=int, default=0, help="teacher sampling and batch order (seed, rollout.seed)"
    )
    p.add_argument("--hb-examples", type=int, default=6)
    p.add_argument("--osce-cases", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=32, help="max new tokens in HealthBench/OSCE answers")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "stage2_ablation.json")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # a shared 2-core machine
    work = Path(tempfile.mkdtemp(prefix="stage2_ablation-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlruns.db'}"  # never the repo's store
    os.environ["M3_ARTIFACT_ROOT"] = str(work / "artifacts")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM

    from m3 import registry
    from m3.config import compose
    from m3.model.tiny import write_tiny_checkpoint
    from stage2_distill import train

    t0 = time.time()
    registry.setup("stage2-ablation")
    base = write_tiny_checkpoint(work / "base", "small", 0)
    registry.publish(base, "m3-base", stage="base")
    teacher_dirs = {}
    for i, d in enumerate(DOMAINS):
        teacher_dirs[d] = make_teacher(base, work / f"teacher-{d}", i + 1, args.sigma, args.tau)
        registry.publish(teacher_dirs[d], f"m3-expert-{d}", stage="stage1")
    overrides = [
        f"steps={args.steps}",
        f"batch_size={args.batch_size}",
        f"lr={args.lr}",
        f"prompts_per_domain={args.prompts_per_domain}",
        f"heldout_per_domain={args.heldout}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.max_response_length={args.max_response_length}",
        f"seed={args.seed}",
        f"rollout.seed={args.seed}",
    ]
    runs, timings = {}, {}
    for arm in ARMS:
        out = work / arm
        if arm != ARMS[0]:  # identical teacher records for both arms
            out.mkdir(parents=True)
            shutil.copy(work / ARMS[0] / "teacher_data.parquet", out / "teacher_data.parquet")
        t = time.time()
        cfg = compose("stage2", [f"loss={arm}", f"out_dir={out}", *overrides])
        mv = train.main(cfg)
        timings[arm] = time.time() - t
        _, held, dhash = train.build_data(cfg, out)
        runs[arm] = {
            "dir": registry.resolve(f"models:/m3-distill/{mv.version}"),
            "data_hash": dhash,
            "history": json.loads((out / "history.json").read_text()),
        }
    assert runs["clip_fkl"]["data_hash"] == runs["fkl"]["data_hash"]
    teachers = {
        d: AutoModelForCausalLM.from_pretrained(teacher_dirs[d], dtype=torch.float32).eval() for d in DOMAINS
    }
    files = heldout_files(work, args.prompts_per_domain + args.heldout, args.hb_examples, args.osce_cases)
    models = {"init": base, "clip_fkl": runs["clip_fkl"]["dir"], "fkl": runs["fkl"]["dir"]}
    results = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_hash": runs["clip_fkl"]["data_hash"],
        "train": {
            arm: {
                "first_loss": runs[arm]["history"]["history"][0]["loss"],
                "last_loss": runs[arm]["history"]["history"][-1]["loss"],
                "masked_frac_last10": sum(
                    h["clip/masked_frac"] for h in runs[arm]["history"]["history"][-10:]
                )
                / len(runs[arm]["history"]["history"][-10:]),
                "seconds": round(timings[arm], 1),
            }
            for arm in ARMS
        },
        "models": {},
    }
    for name, d in models.items():
        results["models"][name] = evaluate_model(name, Path(d), teachers, held, files, work, args)
    results["seconds_total"] = round(time.time() - t0, 1)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(json.dumps(results["train"], indent=2))
    print(f"total {results['seconds_total']:.0f} s; work dir {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
