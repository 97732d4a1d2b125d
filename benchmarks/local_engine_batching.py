"""The local engine's batched generation vs plain `model.generate`, side by side, on the real model.

    python benchmarks/local_engine_batching.py                 # batch 1, 8, 32; 64 new tokens; float32
    python benchmarks/local_engine_batching.py --batches 32 --new-tokens 64 --reps 2
    python benchmarks/local_engine_batching.py --seeded --batches 8 16   # sampled: seeded vs unseeded

Both sides get the same left-padded prompts (HealthBench-sample questions in the chat template),
greedy, `ignore_eos` so every row generates exactly --new-tokens (tokens/s is then comparable):
  generate   `model.generate` on the padded batch (the reference: what HF itself does)
  engine     `LocalServer(max_batch=B)` with B concurrent `generate()` calls, as the agent loop
             issues them (the MicroBatcher collects them into one call, log-probs included)
Prints a markdown row per batch size with the ratio engine/generate, and writes the raw JSON.
`--seeded`: instead, the engine sampling at temperature 0.7 with per-request seeds (each row drawn
from its own generator inside the batched call, what `rl.request_seeds` sends) vs without (generate's
own sampler), same batches: the ratio unseeded time / seeded time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import the checkout's packages


def prompts(tok, n: int) -> list[list[int]]:
    from m3.data.healthbench import load_examples

    ex = load_examples(str(REPO / "data" / "healthbench_sample30.jsonl"))
    out = [tok.apply_chat_template(e.prompt[-1:], add_generation_prompt=True)["input_ids"][-200:] for e in ex]
    return [out[i % len(out)] for i in range(n)]


def time_generate(model, batch: list[list[int]], pad: int, new: int) -> float:
    width = max(map(len, batch))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    t0 = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   pad_token_id=pad, eos_token_id=None)  # fmt: skip
    return time.perf_counter() - t0


def time_engine(
    server, batch: list[list[int]], new: int, temperature: float = 0.0, seeded: bool = False
) -> float:
    params = {"temperature": temperature, "max_tokens": new, "ignore_eos": True, "logprobs": True}

    async def go():
        return await asyncio.gather(
            *(
                server.generate(
                    f"r{i}", prompt_ids=p, sampling_params=params | ({"seed": i} if seeded else {})
                )
                for i, p in enumerate(batch)
            )
        )

    t0 = time.perf_counter()
    outs = asyncio.run(go())
    dt = time.perf_counter() - t0
    assert all(len(o.token_ids) == new for o in outs)
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: convert the real preset)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seeded", action="store_true", help="sampled engine: seeded vs unseeded requests")
    p.add_argument(
        "--out", default=None, help="raw JSON (default benchmarks/local_engine_batching[_seeded].json)"
    )
    args = p.parse_args(argv)
    name = "local_engine_batching_seeded.json" if args.seeded else "local_engine_batching.json"
    args.out = args.out or str(REPO / "benchmarks" / name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from m3.rl.local_server import LocalServer

    d = Path(args.model) if args.model else REPO / "outputs" / "bench-real" / "smollm2"
    if not (d / "config.json").is_file():
        from m3.model.real import convert

        convert(d)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    rows = []
    for b in args.batches:
        batch = prompts(tok, b)
        server = LocalServer(model, seed=0, max_batch=b)
        time_generate(model, batch[:1], tok.pad_token_id, 4)  # warm-up
        if args.seeded:
            t = {sd: min(time_engine(server, batch, args.new_tokens, 0.7, sd) for _ in range(args.reps))
                 for sd in (False, True)}  # fmt: skip
            tokens = b * args.new_tokens
            rows.append({"batch": b, "unseeded_tok_s": tokens / t[False], "seeded_tok_s": tokens / t[True],
                         "ratio": t[False] / t[True]})  # fmt: skip
            print(
                f"| {b} | {tokens / t[False]:.1f} | {tokens / t[True]:.1f} | {t[False] / t[True]:.3f} |",
                flush=True,
            )
            continue
        gen = min(time_generate(model, batch, tok.pad_token_id, args.new_tokens) for _ in range(args.reps))
        eng = min(time_engine(server, batch, args.new_tokens) for _ in range(args.reps))
        tokens = b * args.new_tokens
        rows.append(
            {"batch": b, "generate_tok_s": tokens / gen, "engine_tok_s": tokens / eng, "ratio": gen / eng}
        )
        print(f"| {b} | {tokens / gen:.1f} | {tokens / eng:.1f} | {gen / eng:.3f} |", flush=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "args": vars(args) | {"out": None, "model": d.name},
                "threads": torch.get_num_threads(),
                "rows": rows,
            },
            indent=1,
        )
    )
    if args.seeded:
        print("\n| batch | unseeded tok/s | seeded tok/s | seeded speed / unseeded |\n|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['batch']} | {r['unseeded_tok_s']:.1f} | {r['seeded_tok_s']:.1f} | {r['ratio']:.3f} |"
            )
        return 0
    print("\n| batch | model.generate tok/s | local engine tok/s | engine / generate |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['generate_tok_s']:.1f} | {r['engine_tok_s']:.1f} | {r['ratio']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
