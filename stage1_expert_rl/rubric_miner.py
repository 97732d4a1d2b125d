"""The dynamic-rubric miner beside a cluster job: verl's rollout dumps in, the shared rubric pool out.

    python -m stage1_expert_rl.rubric_miner --rollouts OUT/rollouts --pool OUT/rubric_pool.json \
        --steps-per-epoch 8 [--follow]

On a cluster verl owns the training loop, so the Healthcare expert's rubric evolution (m3.rl.rubric_pool)
runs next to it, on the head node: the job dumps every step's scored rollouts as
`<rollout_data_dir>/<step>.jsonl` (verl's `trainer.rollout_data_dir`: the prompt text, the response,
the ground truth, which for healthcare rows is the core rubric, and the reward's extra info with
`r_task`); this process mines each new step file in order, admits and retires items at every epoch
end, and replaces the pool file atomically. Every reward worker reads that file
(`reward_kwargs.rubric_pool`, re-read when it changes) and logs the version it scored with. A step
file is processed once (the processed steps are kept in `<pool>.steps.json`), so a restarted miner
resumes. Locally, stage1_expert_rl/train.py runs the same `RubricEvolution` in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from m3.judges.base import RubricItem
from m3.rl.rubric_miner import Rollout, RubricEvolution
from m3.rl.rubric_pool import DynamicRubricConfig


def cluster_overrides(out: Path) -> list[str]:
    """verl overrides of a healthcare job with dynamic rubrics: dump the rollouts, read the pool."""
    return [
        f"trainer.rollout_data_dir={out / 'rollouts'}",
        f"+reward.custom_reward_function.reward_kwargs.rubric_pool={out / 'rubric_pool.json'}",
    ]


def sidecar_command(out: Path, cfg: DynamicRubricConfig, steps_per_epoch: int = 8) -> list[str]:
    return ["python", "-m", "stage1_expert_rl.rubric_miner", "--rollouts", str(out / "rollouts"), "--pool",
            str(out / "rubric_pool.json"), "--steps-per-epoch", str(steps_per_epoch), "--miner", cfg.miner,
            "--verifier", cfg.verifier, "--follow"]  # fmt: skip


def rollouts_of(path: Path) -> list[Rollout]:
    """The Rollouts of one verl dump file; each line: input, output, gts (the rubric JSON), r_task."""
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        for key in ("input", "output", "gts", "r_task"):
            if key not in row:
                raise ValueError(f"{path}:{lineno}: field {key!r} missing; is this a healthcare job's dump?")
        core = [
            RubricItem(r["criterion"], float(r["points"]), tuple(r.get("tags", ())))
            for r in json.loads(row["gts"])
        ]
        out.append(Rollout(f"{path.stem}-{lineno}", [{"role": "user", "content": row["input"]}], row["output"],
                           float(row["r_task"]), core))  # fmt: skip
    return out


async def process(
    evolution: RubricEvolution, files: list[Path], steps_per_epoch: int, done: set[int]
) -> set[int]:
    for path in sorted(files, key=lambda p: int(p.stem)):
        step = int(path.stem)
        if step in done:
            continue
        await evolution.step(step, rollouts_of(path))
        if step % steps_per_epoch == 0:
            await evolution.end_epoch(step // steps_per_epoch, step)
        done.add(step)
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", required=True, help="the job's trainer.rollout_data_dir")
    p.add_argument("--pool", required=True, help="the pool file the reward workers read")
    p.add_argument("--steps-per-epoch", type=int, default=8)
    p.add_argument("--miner", default="offline", choices=["offline", "openai"])
    p.add_argument("--verifier", default="auto", choices=["auto", "judge", "human"])
    p.add_argument("--review-file", default=None)
    p.add_argument("--follow", action="store_true", help="keep watching for new step files")
    args = p.parse_args(argv)
    cfg = DynamicRubricConfig(
        dynamic=True, miner=args.miner, verifier=args.verifier, review_file=args.review_file
    )
    evolution = RubricEvolution(cfg, args.pool)
    state = Path(f"{args.pool}.steps.json")
    done = set(json.loads(state.read_text())) if state.is_file() else set()
    while True:
        done = asyncio.run(
            process(evolution, list(Path(args.rollouts).glob("*.jsonl")), args.steps_per_epoch, done)
        )
        state.write_text(json.dumps(sorted(done)))
        print(
            f"rubric pool v{evolution.pool.version}: {len(evolution.pool.active())} active, {len(done)} steps mined",
            flush=True,
        )
        if not args.follow:
            return 0
        time.sleep(30)


if __name__ == "__main__":
    raise SystemExit(main())
