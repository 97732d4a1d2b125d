"""Fact-cache replay: an RL-like claim workload through `m3.facts.cache`, side by side with no cache.

Run from the repo root (about 2-3 minutes on 2 CPU cores, most of it MiniLM embedding):

    python benchmarks/fact_cache_replay.py

Workload (deterministic, --seed): 16 conditions, each with 2-4 drugs and 8 templated facts per
drug (indication, dose, frequency, review interval, side effect, contraindication, effect
direction, timing), every fact rendered through 4 paraphrase templates. Each of the 64 prompts is
about one condition and has a pool of 24 of its facts; prompts come in a fixed shuffled order, one
per RL step. Each of the 16 rollouts of a prompt states 20 distinct claims: a pool fact in a
random paraphrase (Zipf-weighted: some facts appear in most answers), or with --p-adv an
adversarial near-duplicate of a pool fact (dose x10 or /10, mg -> g/mcg, other interval,
weeks -> days, negation added or dropped, lowers -> raises, before -> after), or with --p-novel a
claim outside the pool (made-up drug interactions). All claims of a step go to the cache in one
reward batch (`CachedVerifier.verify`), so results do not depend on thread timing. The fake verifier is instant and labels each claim by its
ground-truth key, so the replay measures the cache alone and every served verdict can be checked:
a false merge is a cached verdict whose key differs from the claim's.

Writes benchmarks/RESULTS_fact_cache.md and benchmarks/fact_cache_hit_rate.png. Throughput is
measured separately on the replay's unique claims: L1 (memory, and Redis if `redis-server` is on
PATH), L2 with precomputed embeddings (ANN + guard only) and L2 including MiniLM embedding.
Limits: a synthetic, templated workload: real claims paraphrase more freely (fewer L2 hits) and
recur less regularly; the hit rate depends on how often prompts share facts (16 conditions for 64
prompts here). Timings come from a shared 2-vCPU VM: compare rows of one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import redis
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: import m3 from this checkout

import m3.text.embeddings as emb  # noqa: E402
from m3.facts.cache import (  # noqa: E402
    DEFAULT_L2_THRESHOLD,
    CachedVerifier,
    InProcessL1,
    RedisL1,
    SemanticL2,
    TwoLevelCache,
    guard_signature,
    normalize_claim,
)
from m3.facts.types import Verdict  # noqa: E402

CONDITIONS = {
    "hypertension": ("lisinopril amlodipine losartan hydrochlorothiazide", "blood pressure"),
    "type 2 diabetes": ("metformin glipizide sitagliptin empagliflozin", "blood sugar"),
    "high cholesterol": ("atorvastatin simvastatin rosuvastatin ezetimibe", "LDL cholesterol"),
    "atrial fibrillation": ("warfarin apixaban metoprolol digoxin", "heart rate"),
    "asthma": ("albuterol budesonide montelukast", "airway inflammation"),
    "depression": ("sertraline fluoxetine bupropion escitalopram", "depressive symptoms"),
    "pneumonia": ("amoxicillin azithromycin doxycycline levofloxacin", "bacterial load"),
    "urinary tract infection": ("nitrofurantoin trimethoprim cephalexin", "bladder bacteria"),
    "hypothyroidism": ("levothyroxine liothyronine", "TSH levels"),
    "gout": ("allopurinol colchicine febuxostat", "uric acid levels"),
    "migraine": ("sumatriptan propranolol topiramate rizatriptan", "migraine frequency"),
    "acid reflux": ("omeprazole pantoprazole famotidine", "stomach acid"),
    "heart failure": ("furosemide spironolactone carvedilol", "fluid overload"),
    "epilepsy": ("levetiracetam lamotrigine carbamazepine", "seizure frequency"),
    "rheumatoid arthritis": ("methotrexate hydroxychloroquine sulfasalazine", "joint inflammation"),
    "osteoarthritis pain": ("ibuprofen naproxen paracetamol diclofenac", "joint pain"),
}
SIDE_EFFECTS = "dry cough|ankle swelling|muscle pain|bleeding|nausea|dizziness|weight gain|headache|diarrhea|insomnia|rash|fatigue|constipation|hair loss".split(
    "|"
)
POPULATIONS = "pregnancy|severe kidney disease|severe liver disease|breastfeeding women|patients with heart block|people with a sulfa allergy".split("|")  # fmt: skip
DOSES = [2.5, 5, 10, 20, 25, 40, 50, 100, 200, 250, 400, 500]

# kind -> (templates of the true fact, templates of its adversarial variant); {D} capitalised drug
T = {
    "treats": (["{D} is used to treat {c}.", "{D} is a treatment for {c}.", "{D} is prescribed for {c}.", "Doctors use {d} to treat {c}."],
               ["{D} is not used to treat {c}.", "{D} is not a treatment for {c}.", "{D} is not prescribed for {c}.", "Doctors do not use {d} to treat {c}."]),
    "dose": (["The usual adult dose of {d} is {x}.", "Adults usually take {x} of {d}.", "{D} is usually dosed at {x} in adults.", "A typical adult dose of {d} is {x}."],) * 2,
    "freq": (["{D} is taken every {h} hours.", "Take {d} every {h} hours.", "{D} should be given every {h} hours.", "A dose of {d} is due every {h} hours."],) * 2,
    "review": (["Patients starting {d} should be reviewed after {n}.", "Review patients on {d} {n} after starting it.", "After {n} on {d}, patients should be reviewed.", "A review {n} after starting {d} is advised."],) * 2,
    "side": (["{D} can cause {s}.", "{S} is a possible side effect of {d}.", "{D} may cause {s}.", "A known side effect of {d} is {s}."],
             ["{D} does not cause {s}.", "{S} is not a side effect of {d}.", "{D} cannot cause {s}.", "{D} is not known to cause {s}."]),
    "contra": (["{D} should not be used in {p}.", "{D} is not recommended in {p}.", "Do not give {d} in {p}.", "{D} must not be used in {p}."],
               ["{D} can be used in {p}.", "{D} is recommended in {p}.", "Give {d} in {p}.", "{D} is suitable for use in {p}."]),
    "effect": (["{D} lowers {m}.", "{D} reduces {m}.", "{D} decreases {m}.", "Taking {d} lowers {m}."],
               ["{D} raises {m}.", "{D} increases {m}.", "{D} elevates {m}.", "Taking {d} raises {m}."]),
    "timing": (["Take {d} before meals.", "{D} should be taken before meals.", "{D} is best taken before eating.", "Take {d} before food."],
               ["Take {d} after meals.", "{D} should be taken after meals.", "{D} is best taken after eating.", "Take {d} after food."]),
}  # fmt: skip
NOVEL = [
    "{D} interacts with {e}.",
    "{D} has a known interaction with {e}.",
    "Taking {d} with {e} causes an interaction.",
]
TEMPLATE_WEIGHTS = [0.5, 0.25, 0.15, 0.1]


def fmt_dose(x: float, unit: str) -> str:
    return f"{x:g} {unit}"


class World:
    """The synthetic knowledge base, prompts and rollouts; `truth` maps claim text -> (key, label)."""

    def __init__(self, seed: int, n_prompts: int, pool: int) -> None:
        rng = random.Random(seed)
        self.truth: dict[str, tuple[str, str]] = {}
        self.facts: dict[str, list[tuple]] = {}  # condition -> facts (kind, slots, variant slots)
        for cond, (drugs, marker) in CONDITIONS.items():
            facts = []
            for d in drugs.split():
                dose, unit = rng.choice(DOSES), rng.choice(["mg"] * 5 + ["mcg"])
                h, n = rng.choice([4, 6, 8, 12, 24]), rng.choice([2, 4, 6, 8, 12])
                alt_dose = rng.choice(
                    [(dose * 10, unit), (dose / 10, unit), (dose, "g" if unit == "mg" else "mg")]
                )
                base = {"d": d, "D": d.capitalize(), "c": cond, "m": marker}
                s = rng.choice(SIDE_EFFECTS)
                facts += [
                    ("treats", base, base),
                    ("dose", {**base, "x": fmt_dose(dose, unit)}, {**base, "x": fmt_dose(*alt_dose)}),
                    (
                        "freq",
                        {**base, "h": h},
                        {**base, "h": rng.choice([x for x in (4, 6, 8, 12, 24) if x != h])},
                    ),
                    (
                        "review",
                        {**base, "n": f"{n} weeks"},
                        {**base, "n": rng.choice([f"{n} days", f"{2 * n} weeks"])},
                    ),
                    ("side", {**base, "s": s, "S": s.capitalize()}, {**base, "s": s, "S": s.capitalize()}),
                    ("contra", {**base, "p": rng.choice(POPULATIONS)}, None),
                    ("effect", base, base),
                    ("timing", base, base),
                ]
            # a negated canonical fact's variant is its un-negated form with the same slots
            self.facts[cond] = [(k, a, a if b is None else b) for k, a, b in facts]
        conds = list(CONDITIONS)
        self.prompts = [(rng.choice(conds), i) for i in range(n_prompts)]
        self.pools = [rng.sample(self.facts[c], min(pool, len(self.facts[c]))) for c, _ in self.prompts]
        self.all_drugs = sorted({d for drugs, _ in CONDITIONS.values() for d in drugs.split()})

    def render(self, rng: random.Random, fact: tuple, variant: bool) -> tuple[str, bool]:
        kind, slots, vslots = fact
        templates = T[kind][1 if variant else 0]
        text = rng.choices(templates, TEMPLATE_WEIGHTS)[0].format(**(vslots if variant else slots))
        key = f"{kind}:{slots['d']}:{'variant' if variant else 'true'}"
        self._record(text, key, "Refuted" if variant else "Supported")
        return text, variant

    def novel(self, rng: random.Random) -> tuple[str, bool]:
        d, e = rng.sample(self.all_drugs, 2)
        text = rng.choice(NOVEL).format(d=d, D=d.capitalize(), e=e)
        self._record(text, "interaction:" + ":".join(sorted((d, e))), "Uncertain")
        return text, False

    def _record(self, text: str, key: str, label: str) -> None:
        if self.truth.setdefault(text, (key, label)) != (key, label):
            raise ValueError(f"generator bug: {text!r} has two keys")

    def rollouts(self, seed: int, step: int, n_rollouts: int, n_claims: int, p_adv: float, p_novel: float):
        rng = random.Random(seed * 100_003 + step)
        pool = self.pools[step]
        zipf = [1 / (r + 1) ** 0.8 for r in range(len(pool))]
        out = []
        for _ in range(n_rollouts):
            claims: dict[str, bool] = {}  # text -> is adversarial; extraction deduplicates
            while len(claims) < n_claims:
                u = rng.random()
                if u < p_novel:
                    text, adv = self.novel(rng)
                else:
                    text, adv = self.render(rng, rng.choices(pool, zipf)[0], variant=u < p_novel + p_adv)
                claims.setdefault(text, adv)
            out.append(claims)
        return out


class CountingVerifier:
    """Instant fake verifier: the ground-truth label, with the key in `rationale` for checking."""

    name, version = "replay-fake", "replay-fake-v1|corpus-1"

    def __init__(self, truth: dict[str, tuple[str, str]]) -> None:
        self.truth, self.calls = truth, 0

    async def verify(self, claims: list[str]) -> list[Verdict]:
        self.calls += len(claims)
        return [Verdict(self.truth[c][1], rationale=self.truth[c][0], verifier=self.version) for c in claims]


def replay(world: World, steps: list, cache: TwoLevelCache | None) -> dict:
    inner = CountingVerifier(world.truth)
    cv = CachedVerifier(
        inner, cache if cache is not None else TwoLevelCache(None, None), use_cache=cache is not None
    )
    per_step, false_adv, false_other, adv_lookups = [], 0, 0, 0

    async def run() -> None:
        nonlocal false_adv, false_other, adv_lookups
        for rollouts in steps:
            before = dict(cache.counts) if cache is not None else {}
            calls0 = inner.calls
            # one reward batch per step: all rollouts' claims in one call (deterministic; concurrent
            # per-rollout calls would make the L1/L2 split depend on thread timing)
            claims = [(text, adv) for r in rollouts for text, adv in r.items()]
            verdicts = await cv.verify([text for text, _ in claims])
            for (text, adv), verdict in zip(claims, verdicts, strict=True):
                adv_lookups += adv
                if verdict.cached and verdict.rationale != world.truth[text][0]:
                    served_adv = verdict.rationale.endswith(":variant")
                    false_adv += adv or served_adv
                    false_other += not (adv or served_adv)
            row = {"claims": len(claims), "calls": inner.calls - calls0}
            if cache is not None:
                row |= {k: cache.counts[k] - before[k] for k in ("l1_hits", "l2_hits", "guard_rejections")}
            per_step.append(row)

    t0 = time.perf_counter()
    asyncio.run(run())
    wall = time.perf_counter() - t0
    return {"steps": per_step, "calls": inner.calls, "claims": cv.claims_in,
            "false_adv": false_adv, "false_other": false_other, "adv_lookups": adv_lookups, "wall": wall,
            "stats": cache.stats() if cache is not None else None}  # fmt: skip


def timed_lookups(
    fn, texts: list[str], batch: int, repeats: int = 5, reset=None
) -> tuple[float, float, float]:
    """Claims/s over all `texts` in batches, and p50/p99 ms per call, from the fastest of `repeats`
    runs (as timeit does: the dev VM is shared and a slower run measures a neighbour, not the code).
    `reset` runs, untimed, before each run."""
    runs = []
    for _ in range(repeats):
        if reset is not None:
            reset()
        lat = []
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            s = time.perf_counter()
            fn(texts[i : i + batch])
            lat.append((time.perf_counter() - s) * 1e3)
        rate = len(texts) / (time.perf_counter() - t0)
        runs.append((rate, float(np.percentile(lat, 50)), float(np.percentile(lat, 99))))
    return max(runs)


def start_redis() -> tuple[subprocess.Popen, str] | None:
    """A throwaway redis-server on a free port, or None when the binary is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2)
    for _ in range(500):
        try:
            client.ping()
            return proc, url
        except redis.exceptions.ConnectionError:  # still starting
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server did not answer PING at {url}")


def cold() -> None:
    """Forget every normalisation and signature: each timed lookup pays them, as a new claim does."""
    normalize_claim.cache_clear()
    guard_signature.cache_clear()


def lookup_rows(world: World, batch_sizes: list[int]) -> list[tuple]:
    """(level, batch, claims/s, p50 ms, p99 ms, note) for L1 and for L2 with precomputed vectors."""
    texts = sorted(world.truth)
    version = CountingVerifier.version
    verdicts = [Verdict(world.truth[t][1], rationale=world.truth[t][0]) for t in texts]
    rows = []
    l1_backends = [("L1 memory", lambda: InProcessL1())]
    server = start_redis()
    if server is not None:
        l1_backends.append(("L1 Redis (local, MGET)", lambda: RedisL1(server[1], prefix="bench:")))
    else:
        print("fact_cache_replay: redis-server is not installed; the Redis L1 rows are skipped", flush=True)
    try:
        for name, make in l1_backends:
            cache = TwoLevelCache(make(), None)
            cache.put_many(texts, verdicts, version)
            for b in batch_sizes:
                rate = timed_lookups(lambda x, c=cache: c.get_many(x, version), texts, b, reset=cold)
                rows.append((name, b, *rate, "all hits; normalisation included"))
    finally:
        if server is not None:
            server[0].kill()
            server[0].wait()
    vecs = emb.embed(texts)  # also warms the embedding cache for the replays
    l2 = SemanticL2()
    l2.add(version, texts, vecs, verdicts)
    pos = {t: i for i, t in enumerate(texts)}

    def ann(batch: list[str]) -> None:  # no norms given: every query goes through HNSW + guard
        l2.lookup(version, vecs[[pos[t] for t in batch]], [guard_signature(t) for t in batch])

    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        for b in batch_sizes:
            rate = timed_lookups(ann, texts, b, reset=cold)
            rows.append((f"L2, precomputed embeddings, {threads} thread(s)", b, *rate, "HNSW search + guard"))
    return rows


def best_rates(rows: list[tuple]) -> tuple[dict[str, float], str]:
    """The best claims/s of each lookup level, and the Redis sentence of the report. A level with no
    rows (no redis-server on this machine) is reported as skipped, not max() of nothing."""
    best = {
        name: max(rates)
        for name in ("L1 memory", "L1 Redis", "L2, pre", "L2, Mini")
        if (rates := [r[2] for r in rows if r[0].startswith(name)])
    }
    redis_line = (
        f"{best['L1 Redis']:,.0f}/s through local Redis"
        if "L1 Redis" in best
        else "Redis rows skipped: redis-server is not installed here (apt-get install redis-server)"
    )
    return best, redis_line


def embed_rows(world: World, batch_sizes: list[int], n: int) -> list[tuple]:
    """L2 lookups through TwoLevelCache.get_many with MiniLM embedding included (cache cleared)."""
    texts = sorted(world.truth)
    version = CountingVerifier.version
    l2 = SemanticL2()
    l2.add(version, texts, emb.embed(texts), [Verdict("Supported")] * len(texts))
    subset = random.Random(1).sample(texts, min(n, len(texts)))
    rows = []

    def reset() -> None:
        emb.clear_cache()
        cold()

    for threads in (1, 2):
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        for b in batch_sizes:
            cache = TwoLevelCache(None, l2)
            rate = timed_lookups(lambda x, c=cache: c.get_many(x, version), subset, b, repeats=1, reset=reset)
            note = f"{len(subset)} claims, embedding cache cleared, 1 run"
            rows.append((f"L2, MiniLM embedding included, {threads} thread(s)", b, *rate, note))
    return rows


def plot(path: Path, modes: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, res in modes.items():
        steps = res["steps"]
        x = np.arange(1, len(steps) + 1)
        line = ax2.plot(x, np.cumsum([s["calls"] for s in steps]), label=name)[0]
        if res["stats"] is not None:
            hit = np.array([(s["l1_hits"] + s["l2_hits"]) / s["claims"] for s in steps])
            # per step is jagged (a prompt on a condition never seen before starts near 0): also show
            # the mean over the last 8 steps
            avg = [hit[max(0, i - 7) : i + 1].mean() for i in range(len(hit))]
            ax1.plot(x, hit, color=line.get_color(), lw=0.8, alpha=0.45, label=f"{name}: per step")
            ax1.plot(x, avg, color=line.get_color(), lw=2.2, label=f"{name}: last 8 steps")
            if "L2" in name:
                ax1.plot(
                    x, [s["l2_hits"] / s["claims"] for s in steps], ":", color="black", lw=1, label="L2 share"
                )
    ax1.set(
        xlabel="RL step (prompt)", ylabel="fraction of claims", ylim=(0, 1), title="cache hit rate per step"
    )
    ax1.axhline(0.85, color="grey", lw=0.8, ls="--")
    ax2.set(
        xlabel="RL step (prompt)", ylabel="claims sent to the verifier", title="cumulative verifier calls"
    )
    for ax, loc in ((ax1, "lower right"), (ax2, "upper left")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--claims", type=int, default=20)
    ap.add_argument("--pool", type=int, default=24, help="facts per prompt")
    ap.add_argument("--p-adv", type=float, default=0.06, help="share of adversarial near-duplicates")
    ap.add_argument("--p-novel", type=float, default=0.06, help="share of claims outside the pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embed-subset", type=int, default=640, help="claims for the embedding-included rows")
    ap.add_argument("--threads", type=int, default=1, help="torch and faiss OpenMP threads for the replays")
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.90, 0.92, 0.93, DEFAULT_L2_THRESHOLD, 0.96])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS_fact_cache.md")
    ap.add_argument("--png", type=Path, default=REPO / "benchmarks" / "fact_cache_hit_rate.png")
    args = ap.parse_args()
    if args.p_adv + args.p_novel >= 1:
        raise ValueError("--p-adv + --p-novel must be < 1 (the rest are pool facts)")

    args.load_start = os.getloadavg()[0]  # the dev VM is shared: say how busy it was
    world = World(args.seed, args.prompts, args.pool)
    steps = [
        world.rollouts(args.seed, i, args.rollouts, args.claims, args.p_adv, args.p_novel)
        for i in range(args.prompts)
    ]
    # One OpenMP thread by default: on the 2-vCPU dev VM, 2 threads made MiniLM 5-8x slower and faiss
    # search of small batches far slower (the throughput table measures both settings).
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    emb.embed(["warm-up"])  # model load is not cache time
    rows = lookup_rows(world, [20, 320])  # first, in a quiet process: no replay threads yet
    modes = {
        "no cache": replay(world, steps, None),
        "L1 only": replay(world, steps, TwoLevelCache(InProcessL1(), None)),
        "L1 + L2": replay(world, steps, TwoLevelCache(InProcessL1(), SemanticL2())),
    }
    sweep = {}
    for th in args.sweep:  # embeddings are cached in-process by now: these replays are cheap
        res = (
            modes["L1 + L2"]
            if th == DEFAULT_L2_THRESHOLD
            else replay(world, steps, TwoLevelCache(InProcessL1(), SemanticL2(th)))
        )
        sweep[th] = (res, adversarial_check(world, th))
    rows += embed_rows(world, [20, 320], args.embed_subset)  # last: it changes the thread counts
    plot(args.png, modes)
    report(args, world, steps, modes, sweep, rows)


def adversarial_check(world: World, threshold: float = DEFAULT_L2_THRESHOLD) -> dict:
    """Every fact in all 4 phrasings stored; every adversarial variant in all 4 phrasings looked up
    (and the reverse). Any served verdict is a false merge: no variant key is in the cache."""
    version = CountingVerifier.version
    true_t, var_t = [], []
    for facts in world.facts.values():
        for kind, slots, vslots in facts:
            true_t += [t.format(**slots) for t in T[kind][0]]
            var_t += [t.format(**vslots) for t in T[kind][1]]
    out = {"queries": 0, "false_merges": 0, "guard_rejections": 0}
    for stored, queries in ((true_t, var_t), (var_t, true_t)):
        cache = TwoLevelCache(None, SemanticL2(threshold))
        cache.put_many(stored, [Verdict("Supported")] * len(stored), version)
        got = cache.get_many(queries, version)
        out["queries"] += len(queries)
        out["false_merges"] += sum(g is not None for g in got)
        out["guard_rejections"] += cache.stats()["guard_rejections"]
    return out


def hit(steps: list[dict], sl: slice) -> float:
    part = steps[sl]
    return sum(s["l1_hits"] + s["l2_hits"] for s in part) / sum(s["claims"] for s in part)


def report(args, world: World, steps: list, modes: dict[str, dict], sweep: dict, rows: list[tuple]) -> None:
    adv = adversarial_check(world)
    base = modes["no cache"]["calls"]
    n_claims = sum(len(r) for st in steps for r in st)
    n_adv = sum(a for st in steps for r in st for a in r.values())
    n_novel = sum(world.truth[t][0].startswith("interaction:") for st in steps for r in st for t in r)
    uniq = len({t for st in steps for r in st for t in r})
    cmd = "python " + " ".join([str(Path(sys.argv[0]).resolve().relative_to(REPO))] + sys.argv[1:])
    redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2] if shutil.which("redis-server") else "not installed"  # fmt: skip

    L = ["# Fact-claim cache replay (`m3.facts.cache`)", "",
         "What it measures: the two-level claim cache (L1 exact, L2 faiss HNSW + exact guard) on an RL-like claim",
         "stream, side by side with no cache and with L1 alone. The verifier is an instant counting fake, so the",
         "numbers are the cache's own. Workload and method: the docstring of `benchmarks/fact_cache_replay.py`.", "",
         "Command (repo root, dev venv):", "", f"    {cmd}", "",
         f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
         f"faiss {faiss.__version__}, torch {torch.__version__}, redis-server {redis_v}, MiniLM on CPU; "
         f"torch and faiss at {args.threads} OpenMP thread(s) unless a row says otherwise. The VM is shared with "
         f"other sessions: 1-minute load average {args.load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", "",
         f"Workload: {args.prompts} prompts (= RL steps) x {args.rollouts} rollouts x {args.claims} claims = {n_claims} claims "
         f"({uniq} distinct texts), {n_adv} adversarial near-duplicates ({n_adv / n_claims:.1%}), "
         f"{n_novel} claims outside the pool ({n_novel / n_claims:.1%}); {len(CONDITIONS)} conditions, "
         f"{sum(len(f) for f in world.facts.values())} facts x 4 phrasings; each step's claims verified as one reward batch.", "",
         "## Replay", "",
         "| mode | verifier calls | saved vs no cache | hit rate, all | first 8 steps | last 8 steps | last step | L1 hits | L2 hits | same-step duplicates | guard rejections | false merges, adversarial | false merges, other | wall s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, res in modes.items():
        st, s = res["steps"], res["stats"]
        if s is None:
            L.append(
                f"| {name} | {res['calls']} | - | - | - | - | - | - | - | 0 | - | - | - | {res['wall']:.1f} |"
            )
            continue
        L.append(f"| {name} | {res['calls']} | {1 - res['calls'] / base:.1%} | {hit(st, slice(None)):.1%} | "
                 f"{hit(st, slice(0, 8)):.1%} | {hit(st, slice(-8, None)):.1%} | {hit(st, slice(-1, None)):.1%} | "
                 f"{s['l1_hits']} | {s['l2_hits']} | {res['claims'] - s['l1_hits'] - s['l2_hits'] - res['calls']} | {s['guard_rejections']} | "
                 f"{res['false_adv']} | {res['false_other']} | {res['wall']:.1f} |")  # fmt: skip
    L += ["", "Hit rate = (L1 + L2 hits) / claims looked up. A miss that repeats another miss of the same step",
          "(same normalised text) is verified once: no verifier call, but not counted as a hit (same-step duplicates).",
          "The L1 + L2 wall time is mostly MiniLM embedding (warm embedding cache here: the texts were embedded",
          "for the throughput section first).",
          f"\"false merges, adversarial\": cached verdicts served to or from one of the {modes['L1 + L2']['adv_lookups']} adversarial",
          "claims whose ground-truth key differs; \"other\": wrong-key verdicts between ordinary claims.", "",
          f"![hit rate per step]({args.png.name})", "", "Per step (every 8th):", "",
          "| step | L1 only: hit rate | L1 + L2: hit rate | L1 + L2: L2 share | L1 + L2: verifier calls | no cache: calls |",
          "|---|---|---|---|---|---|"]  # fmt: skip
    for i in sorted({0, 1, 3, *range(7, args.prompts, 8), args.prompts - 1}):
        a, b, c = modes["L1 only"]["steps"][i], modes["L1 + L2"]["steps"][i], modes["no cache"]["steps"][i]
        L.append(f"| {i + 1} | {hit([a], slice(None)):.1%} | {hit([b], slice(None)):.1%} | "
                 f"{b['l2_hits'] / b['claims']:.1%} | {b['calls']} | {c['calls']} |")  # fmt: skip
    L += ["", "## Adversarial set (guard)", "",
          f"Every fact's 4 phrasings stored, every adversarial variant's 4 phrasings looked up, and the reverse: "
          f"{adv['queries']} lookups, **{adv['false_merges']} false merges**. The guard refused "
          f"{adv['guard_rejections']} of them whose nearest neighbour was above the {DEFAULT_L2_THRESHOLD} cosine threshold: "
          "without the guard those would have been served the wrong verdict.", "",
          "## L2 threshold sweep (same replay, same adversarial set)", "",
          "| threshold | verifier calls | saved vs no cache | hit rate, last 8 steps | L2 hits | guard rejections | false merges, replay (adversarial + other) | false merges, adversarial set |",
          "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for th, (res, a) in sorted(sweep.items()):
        mark = " (default)" if th == DEFAULT_L2_THRESHOLD else ""
        L.append(f"| {th:.2f}{mark} | {res['calls']} | {1 - res['calls'] / base:.1%} | {hit(res['steps'], slice(-8, None)):.1%} | "
                 f"{res['stats']['l2_hits']} | {res['stats']['guard_rejections']} | {res['false_adv']} + {res['false_other']} | "
                 f"{a['false_merges']} / {a['queries']} |")  # fmt: skip
    L += ["",
          "## Lookup throughput (unique claims of the replay, calls from one thread, fastest of 5 runs)", "",
          "| level | batch (claims per call) | claims/s | p50 ms per call | p99 ms per call | what is timed |",
          "|---|---|---|---|---|---|"]  # fmt: skip
    for name, b, rate, p50, p99, note in rows:
        L.append(f"| {name} | {b} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {note} |")
    L += [
        "",
        "Claims are normalised and signed (`normalize_claim`, `guard_signature`) with their LRU caches",
        "cleared first, so every lookup pays that cost once, as a claim seen for the first time does.",
    ]
    two = modes["L1 + L2"]
    best, redis_line = best_rates(rows)
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    L += ["", "## Against the targets", "",
          f"- hit rate at the end of the replay >= 85%: {ok(hit(two['steps'], slice(-8, None)) >= 0.85)} "
          f"({hit(two['steps'], slice(-8, None)):.1%} over the last 8 steps, {hit(two['steps'], slice(-1, None)):.1%} at the last step).",
          f"- zero false merges: {ok(two['false_adv'] + two['false_other'] + adv['false_merges'] == 0)} at the default threshold "
          f"(replay {two['false_adv']} + {two['false_other']}, adversarial set {adv['false_merges']}); at 0.92, the first planned "
          "default, MiniLM merges different facts that the guard cannot tell apart (sweep above).",
          f"- cached lookups >= 10k claims/s on 2 cores: L1 {ok(best['L1 memory'] >= 1e4)} ({best['L1 memory']:,.0f}/s in memory, "
          f"{redis_line}); L2 with precomputed embeddings {best['L2, pre']:,.0f}/s "
          f"(best thread setting); L2 with MiniLM embedding {best['L2, Mini']:,.0f}/s, bounded by MiniLM on these CPUs, not by",
          "  the index. The denoised reward (docs/formulas.md Fact-Aware RL item 4) embeds the same claims; when both go through",
          "  `m3.text.embeddings.embed`, its LRU makes the marginal L2 cost the precomputed-embedding row.",
          ]  # fmt: skip
    args.out.write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
