"""Judge-client throughput: sequential vs. a thread pool vs. `m3.llm.AsyncLLMClient`.

Run from the repo root:

    python benchmarks/judge_client_throughput.py --n 150 --delay 0.2 --cap 16

It starts the fake OpenAI-compatible server (tests/fakes/openai_server.py) in a separate process,
so client and server do not share a GIL, with a fixed per-request latency `--delay`, then runs the
same N distinct chat calls (no cache) three ways:
  (a) sequential, the sync `openai.OpenAI` client one call at a time;
  (b) `ThreadPoolExecutor(max_workers=cap)` with the sync client (simple-evals' map_with_progress);
  (c) `AsyncLLMClient` with `max_concurrency=cap`.
With a server of fixed latency the throughput ceiling is cap / delay calls/s; the table shows each
mode's calls/s as a fraction of it, and the server-side peak of concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
# Run as a script, sys.path[0] is benchmarks/: put the checkout first so that `m3` and `tests.fakes`
# come from it (tests/ is a regular package, so a site-packages `tests` from verl cannot shadow it).
sys.path.insert(0, str(REPO))

from m3.llm import AsyncLLMClient, LLMConfig  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

MODEL = "fake-model"


def serve(delay_s: float, port_queue: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    with FakeOpenAIServer(delay_s=delay_s) as srv:
        port_queue.put(srv.base_url)
        stop.wait()


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(n)]


# Each mode makes one warm-up call first (untimed): the openai package imports its chat types
# lazily on first use (~0.1-0.5 s), a one-off cost that is not throughput. Modes return (ok, wall s).
def run_sequential(base_url: str, msgs: list[list[dict]]) -> tuple[int, float]:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    client.chat.completions.create(model=MODEL, messages=msgs[0], max_tokens=16)
    start = time.perf_counter()
    answers = [client.chat.completions.create(model=MODEL, messages=m, max_tokens=16) for m in msgs]
    wall = time.perf_counter() - start
    return sum(1 for a in answers if a.choices[0].message.content), wall


def run_threads(base_url: str, msgs: list[list[dict]], cap: int) -> tuple[int, float]:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")

    def one(m: list[dict]) -> str | None:
        return (
            client.chat.completions.create(model=MODEL, messages=m, max_tokens=16).choices[0].message.content
        )

    one(msgs[0])
    with ThreadPoolExecutor(max_workers=cap) as pool:
        start = time.perf_counter()
        ok = sum(1 for text in pool.map(one, msgs) if text)
        return ok, time.perf_counter() - start


def run_async(base_url: str, msgs: list[list[dict]], cap: int) -> tuple[int, float]:
    cfg = LLMConfig(
        model=MODEL, base_url=base_url, api_key_env="M3_BENCH_NO_KEY", max_concurrency=cap, max_tokens=16
    )

    async def main() -> tuple[int, float]:
        async with AsyncLLMClient(cfg) as client:
            await client.chat(msgs[0])
            start = time.perf_counter()
            results = await asyncio.gather(*(client.chat(m) for m in msgs))
            wall = time.perf_counter() - start
        return sum(1 for r in results if r.ok and r.text), wall

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=150, help="chat calls per mode")
    ap.add_argument("--delay", type=float, default=0.2, help="fake server latency per request, seconds")
    ap.add_argument("--cap", type=int, default=16, help="concurrency of modes (b) and (c)")
    ap.add_argument("--modes", default="abc", help="modes to run, e.g. 'bc' skips the slow sequential run")
    args = ap.parse_args()
    if args.n < 1 or args.cap < 1 or args.delay <= 0:
        raise ValueError("need --n >= 1, --cap >= 1 and --delay > 0")
    if not args.modes or set(args.modes) - set("abc"):
        raise ValueError(f"--modes {args.modes!r}: use letters from 'abc', e.g. --modes bc")

    # fork: the child only runs the server; it needs nothing from a fresh interpreter.
    ctx = multiprocessing.get_context("fork")
    port_queue, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(args.delay, port_queue, stop), daemon=True)
    server.start()
    base_url = port_queue.get(timeout=30)
    root = base_url.removesuffix("/v1")
    msgs = prompts(args.n)
    all_modes = {
        "a": ("(a) sequential, sync openai client", lambda: run_sequential(base_url, msgs)),
        "b": (
            f"(b) ThreadPoolExecutor({args.cap}), sync openai client",
            lambda: run_threads(base_url, msgs, args.cap),
        ),
        "c": (f"(c) AsyncLLMClient(max_concurrency={args.cap})", lambda: run_async(base_url, msgs, args.cap)),
    }
    modes = dict(all_modes[m] for m in sorted(set(args.modes)))
    ideal = args.cap / args.delay
    rows, seq_wall = [], None
    try:
        for name, fn in modes.items():
            httpx.post(f"{root}/fake/reset")
            ok, wall = fn()
            stats = httpx.get(f"{root}/fake/stats").json()
            if name.startswith("(a)"):
                seq_wall = wall
            rate = args.n / wall
            speedup = f"{seq_wall / wall:.1f}x" if seq_wall else "n/a"
            rows.append(
                f"| {name} | {ok}/{args.n} | {wall:.2f} | {rate:.1f} | {speedup} | "
                f"{rate / ideal:.0%} | {stats['max_in_flight']} |"
            )
            print(f"done: {name}: {wall:.2f} s", file=sys.stderr)
    finally:
        stop.set()
        server.join(timeout=10)

    waves = -(-args.n // args.cap)  # all calls start together: ceil(n / cap) rounds of `delay`
    print(
        f"\nN={args.n} calls, server latency {args.delay} s, cap {args.cap}; ideal cap/delay = {ideal:.1f} calls/s"
    )
    print(f"(round-quantised bound for N={args.n}: {args.n / (waves * args.delay):.1f} calls/s)\n")
    print("| mode | ok | wall s | calls/s | vs sequential | of cap/delay | server peak in-flight |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
