"""Gated vs ungated Eagle3 draft: acceptance length at the same data and steps, over seeds (CPU).

    python benchmarks/draft_gate_ablation.py                     # small preset, 3 seeds, a few minutes
    python benchmarks/draft_gate_ablation.py --steps 300 --seeds 0 1 2 3 4
    python benchmarks/draft_gate_ablation.py --target DIR --write-prompts p.json   # the real preset's prompts
    python benchmarks/draft_gate_ablation.py --target DIR --prompts-json p.json --device cuda --steps 2000
    python benchmarks/draft_gate_ablation.py --target DIR --k 3 --tree-topk 4 --tree-tokens 8   # + tree

With `--target DIR` (e.g. the real preset, m3.model.real.convert) the target is that checkpoint as
it is. `--write-prompts` stores the prompt token ids (train and held-out) and exits, so a machine
without the project's data stack (the GPU machine) runs from `--prompts-json` alone.

Target: the `small` preset with its output head untied and redrawn from seed 0 (the tied random
preset mostly repeats its input token under greedy decoding, which any draft predicts perfectly).
The target answers `--prompts-per-domain` prompts of each domain once (greedy, shared by all
seeds). Per seed, a gated and an ungated draft start from the same weights (the gate is the only
extra tensor, draft_eagle3.model) and train side by side on the same batches
(draft_eagle3.train.train_side_by_side); then reference speculative decoding (chain, k draft tokens)
on held-out prompts gives each one's acceptance length (tokens per target forward); with
`--tree-topk` the same drafts are also verified as EAGLE-2 trees (draft_eagle3.speculative). Prints a JSON
and a markdown table; the paper reports +0.25..+0.45 for the gate on Qwen3-235B (2.41 -> 2.70).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages

from draft_eagle3 import train as T  # noqa: E402


def walk_target(preset: str, tmp: Path):
    """The preset target with an untied output head drawn from seed 0 (module docstring)."""
    from transformers import AutoModelForCausalLM

    from m3.model.tiny import write_tiny_checkpoint

    d = write_tiny_checkpoint(tmp / preset, preset, 0)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, tie_word_embeddings=False)
    with torch.no_grad():
        w = model.lm_head.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    return model.eval(), d


def _rel(value):
    """An absolute path inside the checkout as a path relative to it; anything else unchanged."""
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).resolve().is_relative_to(REPO):
        return str(Path(value).resolve().relative_to(REPO))
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--prompts-per-domain", type=int, default=8)
    p.add_argument("--heldout-per-domain", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--k", type=int, default=6)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core VM)"
    )
    p.add_argument(
        "--target", default=None, help="a checkpoint directory (default: the --preset walk target)"
    )
    p.add_argument("--tree-topk", type=int, default=0, help="> 1: also measure tree drafting (depth k)")
    p.add_argument("--tree-tokens", type=int, default=None, help="verified tokens of the tree (default 2k+2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompts-json", default=None, help="prompt token ids written by --write-prompts")
    p.add_argument("--write-prompts", default=None, help="write the prompt token ids here and exit")
    p.add_argument("--out", default=None, help="also write the result JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.target:
            d = Path(args.target)
            target = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval().to(args.device)
        else:
            target, d = walk_target(args.preset, Path(tmp))
            target = target.to(args.device)
        base = dict(target=str(d), prompts_per_domain=args.prompts_per_domain,
                    heldout_per_domain=args.heldout_per_domain, max_new_tokens=args.max_new_tokens,
                    steps=args.steps, eval_k=args.k, eval_max_new_tokens=args.max_new_tokens,
                    device=args.device)  # fmt: skip
        cfg = T.DraftConfig(**base)
        if args.prompts_json:
            train_p, held = (json.loads(Path(args.prompts_json).read_text())[k] for k in ("train", "held"))
        else:
            train_p, held = T.prompt_sets(cfg, AutoTokenizer.from_pretrained(d))
        if args.write_prompts:
            Path(args.write_prompts).write_text(json.dumps({"train": train_p, "held": held}))
            print(f"{len(train_p)} training and {len(held)} held-out prompts -> {args.write_prompts}")
            return 0
        tree_tokens = args.tree_tokens or 2 * args.k + 2
        samples, ids, head, aux, _ = T.prepare_data(cfg, target, train_p, Path(tmp) / "data.safetensors")
        rows = []
        for seed in args.seeds:
            cfg = T.DraftConfig(**base, seed=seed)
            torch.manual_seed(seed)
            drafts = {v: T.build_draft(cfg, target, ids, aux, gated=v == "gated") for v in T.VARIANTS}
            hist = T.train_side_by_side(cfg, drafts, samples, head)
            ev = T.evaluate(cfg, target, drafts, held)
            tree = {}
            if args.tree_topk > 1:  # the same drafts, verified as a tree
                tcfg = dataclasses.replace(cfg, eval_topk=args.tree_topk, eval_num_draft_tokens=tree_tokens)
                tev = T.evaluate(tcfg, target, drafts, held)
                tree = {
                    **{f"{v}_tree_acceptance": tev[v]["acceptance_length"] for v in T.VARIANTS},
                    **{f"{v}_tree_per_position": tev[v]["per_position_acceptance"] for v in T.VARIANTS},
                    "tree_identical_outputs": all(tev[v]["identical_outputs"] for v in T.VARIANTS),
                }
            rows.append(
                {
                    "seed": seed,
                    **{f"{v}_acceptance": ev[v]["acceptance_length"] for v in T.VARIANTS},
                    **{f"{v}_per_position": ev[v]["per_position_acceptance"] for v in T.VARIANTS},
                    **tree,
                    **{
                        f"{v}_final_loss": statistics.mean(h[f"{v}/loss"] for h in hist[-10:])
                        for v in T.VARIANTS
                    },
                    "identical_outputs": all(ev[v]["identical_outputs"] for v in T.VARIANTS),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    gain = [r["gated_acceptance"] - r["ungated_acceptance"] for r in rows]
    result = {
        "setup": {
            # paths inside the checkout are stored relative to it (no machine's paths in results)
            **{k: _rel(v) for k, v in vars(args).items()},
            "draft_vocab": int(ids.numel()),
            "aux_layers": aux,
            "train_samples": len(samples),
            "heldout_prompts": len(held),
            "seconds": round(time.perf_counter() - t_start, 1),
        },  # fmt: skip
        "rows": rows,
        "mean_gated": statistics.mean(r["gated_acceptance"] for r in rows),
        "mean_ungated": statistics.mean(r["ungated_acceptance"] for r in rows),
        "mean_gain": statistics.mean(gain),
        "gain_std": statistics.stdev(gain) if len(gain) > 1 else 0.0,
    }
    if args.tree_topk > 1:
        tgain = [r["gated_tree_acceptance"] - r["ungated_tree_acceptance"] for r in rows]
        result |= {
            "tree": {"topk": args.tree_topk, "depth": args.k, "num_draft_tokens": tree_tokens},
            "mean_tree_gated": statistics.mean(r["gated_tree_acceptance"] for r in rows),
            "mean_tree_ungated": statistics.mean(r["ungated_tree_acceptance"] for r in rows),
            "mean_tree_gain": statistics.mean(tgain),
            "tree_gain_std": statistics.stdev(tgain) if len(tgain) > 1 else 0.0,
        }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print("\n| seed | ungated | gated | gain |\n|---|---|---|---|")
    for r, g in zip(rows, gain, strict=True):
        print(f"| {r['seed']} | {r['ungated_acceptance']:.2f} | {r['gated_acceptance']:.2f} | {g:+.2f} |")
    print(
        f"| mean | {result['mean_ungated']:.2f} | {result['mean_gated']:.2f} | "
        f"{result['mean_gain']:+.2f} ± {result['gain_std']:.2f} |"
    )
    if args.tree_topk > 1:
        print(
            f"tree (topk {args.tree_topk}, depth {args.k}, {tree_tokens} tokens): ungated "
            f"{result['mean_tree_ungated']:.2f}, gated {result['mean_tree_gated']:.2f}, gain "
            f"{result['mean_tree_gain']:+.2f} ± {result['tree_gain_std']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
