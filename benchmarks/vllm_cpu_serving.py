"""vLLM's CPU build against transformers `generate` on the real model (SmolLM2-135M-Instruct), Eagle3
speculative decoding on vs off (ungated and gated drafts), and vLLM's acceptance length against our
reference decoder (draft_eagle3/speculative.py) on the same prompts.

    make setup setup-serve
    .venv/bin/python benchmarks/vllm_cpu_serving.py                      # everything, ~50 min on 2 cores
    .venv/bin/python benchmarks/vllm_cpu_serving.py --phases drafts      # only train/export the drafts
    .venv/bin/python benchmarks/vllm_cpu_serving.py --phases hf --hf-threads 1   # add a 1-thread baseline

Writes benchmarks/vllm_cpu_serving.json (raw numbers); work files (model, drafts, server logs) go to
outputs/bench-vllm-cpu/. Phases, each cached in the work directory where it makes sense:
1. model: m3.model.real.convert (float32 safetensors from the PyPI GGUF).
2. drafts: ungated and gated Eagle3 drafts trained side by side with draft_eagle3 (data = the target's
   own greedy answers to the domain prompts; training-time test; same init, the gate the only
   difference), exported in vLLM's layout (aux ids input-of-layer [2, 15, 27]), float32.
3. reference: our reference decoder at k = 3 (vLLM's num_speculative_tokens) on the evaluation prompts
   (12 of the training prompts and the 12 held-out ones, reported separately), float32, batch 1.
4. vllm: one server at a time (serve.launch, the same command `make serve ENGINE=vllm` runs), for
   target alone, + ungated draft, + gated draft. Start-up time (torch.compile on: the serving default;
   one extra eager start for comparison); the evaluation prompts as token ids through /v1/completions,
   greedy, sequentially: outputs vs the reference's plain greedy and acceptance length from /metrics
   (1 + accepted/drafts, counters diffed around the run); then load: 1, 8, 32 concurrent streaming
   requests of 64 tokens each (ignore_eos, so every request makes 64), tokens/s = all completion tokens
   / wall time of the wave, TTFT = time to the first streamed token, mean over requests.
5. hf: transformers `generate` in this process (float32, left padding with <|im_end|>), batch 1, 8, 32
   of the same prompts, 64 new tokens (min_new_tokens = 64); TTFT = one-token generate of the batch.
The machine is shared: numbers on 2 busy cores are noisy; both engines are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from m3.config import REPO_ROOT

K = 3  # vLLM's num_speculative_tokens (serve config default); the reference decodes at the same k
MAX_NEW = 64
CONCURRENCY = (1, 8, 32)
VARIANTS = ("ungated", "gated")


# --- phases 1-3: model, drafts, reference ---------------------------------------------------------


def model_dir(work: Path) -> Path:
    from m3.model.real import convert

    out = work / "smollm2"
    if not (out / "config.json").is_file():
        convert(out)
    return out


def draft_config(steps: int):
    from draft_eagle3.train import DraftConfig

    return DraftConfig(
        prompts_per_domain=12, heldout_per_domain=4, max_new_tokens=MAX_NEW, draft_vocab_size=4096,
        steps=steps, batch_size=4, export_layer_ids="vllm", export_dtype="float32", seed=0,
    )  # fmt: skip


def _collate_in_vocab(collate, vocab_size: int):
    """draft_eagle3.data.collate pads input_ids with Qwen3's <|endoftext|> (151643), outside SmolLM2's
    49,152-token vocabulary; padded positions are masked out of the loss, so pad with 0 instead."""

    def wrapped(samples, head, device="cpu"):
        batch = collate(samples, head, device)
        batch["input_ids"][batch["input_ids"] >= vocab_size] = 0
        return batch

    return wrapped


def train_drafts(work: Path, target, tok, steps: int) -> dict:
    """Both drafts exported under work/draft-<variant> (skipped when there); the training prompts and
    the held-out prompts as token ids."""
    from draft_eagle3 import data as D
    from draft_eagle3 import train as T
    from draft_eagle3.export import export_draft

    cfg = draft_config(steps)
    train_prompts, heldout = T.prompt_sets(cfg, tok)
    dirs = {v: work / f"draft-{v}" for v in VARIANTS}
    info_path = work / "drafts.json"
    if all((d / "model.safetensors").is_file() for d in dirs.values()) and info_path.is_file():
        info = json.loads(info_path.read_text())
    else:
        t0 = time.perf_counter()
        samples, draft_ids, head, aux, _ = T.prepare_data(
            cfg, target, train_prompts, work / "draft_data.safetensors"
        )
        t_data = time.perf_counter() - t0
        print(f"  draft data: {len(samples)} samples in {t_data:.0f}s", flush=True)
        D.collate = _collate_in_vocab(D.collate, target.config.vocab_size)
        torch.manual_seed(cfg.seed)
        drafts = {v: T.build_draft(cfg, target, draft_ids, aux, gated=v == "gated") for v in VARIANTS}
        t0 = time.perf_counter()

        def log(metrics, step):
            if step % 25 == 0:
                shown = {k: round(x, 3) for k, x in metrics.items() if k.endswith(("/loss", "/acc_0"))}
                print(f"  step {step}/{steps} ({time.perf_counter() - t0:.0f}s): {shown}", flush=True)

        history = T.train_side_by_side(cfg, drafts, samples, head, log=log)
        for v, d in drafts.items():
            export_draft(d, dirs[v], layer_ids="vllm", dtype="float32", extra={"steps": steps})
        last = history[-1] if history else {}
        info = {
            "steps": steps, "train_prompts": len(train_prompts), "heldout_prompts": len(heldout),
            "draft_vocab": int(draft_ids.numel()), "aux_layers_output_of_layer": aux,
            "data_seconds": round(t_data, 1), "train_seconds": round(time.perf_counter() - t0, 1),
            "final": {k: round(x, 4) for k, x in last.items() if k.endswith(("loss", "acc_0", "acc_1", "acc_2"))},
        }  # fmt: skip
        info_path.write_text(json.dumps(info, indent=2))
    return {
        "info": info,
        "dirs": {v: str(d) for v, d in dirs.items()},
        "train": train_prompts,
        "heldout": heldout,
    }


def reference(target, draft_dirs: dict, prompt_sets: dict) -> dict:
    """Our reference decoder at k=K per draft and prompt set: acceptance length, plain greedy tokens."""
    from draft_eagle3.export import load_draft
    from draft_eagle3.speculative import compare, greedy_generate
    from draft_eagle3.train import eos_ids

    eos = eos_ids(target)
    out: dict = {}
    for name, prompts in prompt_sets.items():
        plain = [greedy_generate(target, p, MAX_NEW, eos) for p in prompts]
        out[name] = {"plain_tokens": [r.tokens for r in plain]}
        for v, d in draft_dirs.items():
            r = compare(target, load_draft(d, target), prompts, K, MAX_NEW, eos, plain=plain)
            out[name][v] = {k: r[k] for k in ("acceptance_length", "per_position_acceptance", "verify_steps",
                                             "identical_outputs", "speedup")}  # fmt: skip
    return out


# --- phase 4: vLLM --------------------------------------------------------------------------------


def start_server(model: Path, draft: str | None, port: int, eager: bool, log: Path):
    """(process, plan, seconds to ready) through serve.launch (what `make serve ENGINE=vllm` runs)."""
    from m3.config import compose
    from serve import launch
    from serve.smoke import wait_ready

    overrides = [f"model={model}", "engine=vllm", f"port={port}", f"log_file={log}", "foreground=false"]
    overrides += [f"draft={draft}" if draft else "draft=off", f"enforce_eager={str(eager).lower()}"]
    overrides += [f"out_dir={log.parent / 'serve-out'}"]
    plan = launch.plan_serve(compose("serve/serve", overrides))
    launch.check_engine_installed(plan)
    launch.check_port_free("127.0.0.1", port)
    t0 = time.perf_counter()
    proc = launch.start(plan, log, plan.engine_bin)
    try:
        wait_ready(plan.base_url.removesuffix("/v1"), timeout_s=900, proc=proc)
    except BaseException:
        launch.stop(proc)
        raise
    return proc, plan, time.perf_counter() - t0


def complete(base_url: str, prompt: list[int], max_tokens: int, ignore_eos: bool = False) -> dict:
    r = httpx.post(
        f"{base_url}/completions",
        json={
            "model": "m3",
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": ignore_eos,
            "return_token_ids": True,
        },  # fmt: skip
        timeout=600.0,
    )
    r.raise_for_status()
    return r.json()["choices"][0]


def vllm_acceptance(base_url: str, prompt_sets: dict, ref: dict, variant: str | None) -> dict:
    """Sequential greedy decoding of every prompt set; outputs vs the reference's plain greedy and,
    with a draft, the acceptance length from /metrics vs the reference decoder's."""
    from serve.spec_metrics import acceptance_length, compare_acceptance, per_position_acceptance, scrape

    root = base_url.removesuffix("/v1")
    out = {}
    for name, prompts in prompt_sets.items():
        before = scrape(root)
        got = [complete(base_url, p, MAX_NEW)["token_ids"] for p in prompts]
        c = scrape(root) - before
        want = ref[name]["plain_tokens"]
        row = {
            "identical_to_reference_greedy": sum(g == w for g, w in zip(got, want, strict=True)),
            "prompts": len(prompts),
            "mismatch_first_index": [
                next((i for i, (a, b) in enumerate(zip(g, w, strict=False)) if a != b), min(len(g), len(w)))
                for g, w in zip(got, want, strict=True)
                if g != w
            ],  # fmt: skip
        }
        if variant is not None:
            al = acceptance_length(c)
            row |= {
                "drafts": c.drafts, "draft_tokens": c.draft_tokens, "accepted": c.accepted,
                "acceptance_length": al, "per_position_acceptance": per_position_acceptance(c),
                "vs_reference": compare_acceptance(al, ref[name][variant]["acceptance_length"]),
            }  # fmt: skip
        out[name] = row
    return out


def _stream_one(base_url: str, prompt: list[int], t_start: float) -> dict:
    ttft, tokens = None, 0
    body = {"model": "m3", "prompt": prompt, "max_tokens": MAX_NEW, "temperature": 0.0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{base_url}/completions", json=body, timeout=900.0) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                ttft = time.perf_counter() - t_start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft": ttft, "tokens": tokens}


def vllm_load(base_url: str, prompts: list[list[int]]) -> dict:
    """One wave of c concurrent streaming requests per concurrency level."""
    complete(base_url, prompts[0], 8)  # warm-up
    out = {}
    for c in CONCURRENCY:
        barrier = threading.Barrier(c)

        def run(p, barrier=barrier):
            barrier.wait()  # all c requests leave together
            return _stream_one(base_url, p, time.perf_counter())

        start = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            rows = list(pool.map(run, prompts[:c]))
        wall = time.perf_counter() - start
        tokens = sum(r["tokens"] for r in rows)
        out[str(c)] = {
            "requests": c, "completion_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 2),
            "ttft_mean_s": round(statistics.mean(r["ttft"] for r in rows), 3),
        }  # fmt: skip
        print(f"  concurrency {c}: {out[str(c)]}", flush=True)
    return out


# --- phase 5: transformers ------------------------------------------------------------------------


@torch.no_grad()
def hf_load(target, tok, prompts: list[list[int]]) -> dict:
    pad = tok.convert_tokens_to_ids("<|im_end|>")

    def batch(ps):
        T = max(map(len, ps))
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in ps])
        return {"input_ids": ids, "attention_mask": mask}

    kw = {"do_sample": False, "pad_token_id": pad}
    target.generate(**batch(prompts[:1]), max_new_tokens=8, **kw)  # warm-up
    out = {}
    for c in CONCURRENCY:
        b = batch(prompts[:c])
        t0 = time.perf_counter()
        target.generate(**b, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen = target.generate(**b, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW, **kw)
        wall = time.perf_counter() - t0
        tokens = (gen.shape[1] - b["input_ids"].shape[1]) * c
        out[str(c)] = {"requests": c, "completion_tokens": tokens, "wall_s": round(wall, 2),
                       "tokens_per_s": round(tokens / wall, 2), "ttft_mean_s": round(ttft, 3)}  # fmt: skip
        print(f"  hf batch {c}: {out[str(c)]}", flush=True)
    return out


def _relative(text: str) -> str:
    """Paths in the JSON relative to the repository (the file is committed)."""
    return text.replace(str(REPO_ROOT) + "/", "")


# --- main -----------------------------------------------------------------------------------------


def load_prompts(tok, n: int) -> list[list[int]]:
    """n chat prompts of the three domains (after the draft's training and held-out ones) as token ids."""
    from draft_eagle3 import data as D

    rows = D.domain_prompts((n + 2) // 3, offset=16)
    return [D.prompt_ids(tok, m, 256) for _, m in rows][:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO_ROOT / "outputs" / "bench-vllm-cpu"))
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "vllm_cpu_serving.json"))
    p.add_argument("--steps", type=int, default=300, help="draft training steps")
    p.add_argument("--port", type=int, default=8390)
    p.add_argument("--phases", default="drafts,reference,vllm,hf")
    p.add_argument(
        "--train-threads", type=int, default=1, help="torch threads for drafts/reference (shared CPU)"
    )
    p.add_argument(
        "--hf-threads", type=int, default=0, help="torch threads of the transformers baseline; 0: all"
    )
    args = p.parse_args(argv)
    phases = set(args.phases.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from draft_eagle3.train import load_target

    mdir = model_dir(work)
    full_threads = torch.get_num_threads()
    torch.set_num_threads(args.train_threads)  # 1 is much faster than 2 on 2 cores someone else also uses
    target, tok = load_target(mdir, "cpu")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}  # phases run separately add up
    result: dict = previous | {"model": str(mdir), "k": K, "max_new_tokens": MAX_NEW}
    drafts = train_drafts(work, target, tok, args.steps)
    result["drafts"] = drafts["info"]
    print(f"drafts: {drafts['info']}", flush=True)
    # 12 of the 36 training prompts (4 per domain) and the 12 held-out ones
    sets = {"train_prompts": drafts["train"][:12], "heldout_prompts": drafts["heldout"]}
    if "reference" in phases or "vllm" in phases:
        ref = reference(target, drafts["dirs"], sets)
        result["reference"] = {n: {v: r[v] for v in VARIANTS} for n, r in ref.items()}
        print(f"reference: {json.dumps(result['reference'])}", flush=True)
    prompts = load_prompts(tok, max(CONCURRENCY))
    if "vllm" in phases:
        result["vllm"] = {}
        runs = [("target", None, True), ("target", None, False)] + [
            (v, drafts["dirs"][v], False) for v in VARIANTS
        ]
        for name, draft, eager in runs:
            label = f"{name}{'-eager' if eager else ''}"
            print(f"vllm {label}: starting", flush=True)
            proc, plan, startup = start_server(mdir, draft, args.port, eager, work / f"vllm-{label}.log")
            from serve import launch

            try:
                row: dict = {"startup_s": round(startup, 1), "command": plan.describe().splitlines()[-1]}
                print(f"  up in {startup:.1f}s", flush=True)
                if not eager:
                    row["acceptance"] = vllm_acceptance(
                        plan.base_url, sets, ref, None if draft is None else name
                    )
                    print(f"  acceptance: {json.dumps(row['acceptance'])}", flush=True)
                    row["load"] = vllm_load(plan.base_url, prompts)
            finally:
                launch.stop(proc)
            result["vllm"][label] = row
            out.write_text(_relative(json.dumps(result, indent=2)) + "\n")
    if "hf" in phases:
        threads = args.hf_threads or full_threads  # default: every core, as vLLM uses
        torch.set_num_threads(threads)
        result.setdefault("hf", {})[f"threads_{threads}"] = hf_load(target, tok, prompts)
    out.write_text(_relative(json.dumps(result, indent=2)) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
