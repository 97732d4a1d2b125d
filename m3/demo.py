"""`make demo`: the pipeline on the tiny preset, offline, each step resumable.

Each step is a separate command (stages never import each other; the demo only runs them), and
each one skips its work when its registered output or its results for the same config exist, so
re-running `make demo` resumes. Every step leaves a one-line summary JSON in `outputs/demo/` from
which the closing table is printed.

    m3 demo                                  # make demo
    m3 demo model=small_qwen3_moe            # overrides are passed to every step
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from m3 import registry
from m3.config import REPO_ROOT, compose, register_schema


@dataclass
class DemoConfig:
    model: str = "tiny_qwen3_moe"
    out_dir: str = "outputs/demo"
    healthbench_examples: int = 30  # the 30 real sample records shipped in data/
    hallu_examples: int = 10
    osce_cases: int = 5
    osce_inquiry_turns: int = 4
    expert_steps: int = 3
    distill_steps: int = 10
    judge: str = "offline"
    max_new_tokens: int = 64  # tiny models ramble: keep demo generations short
    steps: list[str] = field(
        default_factory=lambda: [
            "base",
            "expert_inquiry",
            "expert_healthcare",
            "expert_general",
            "distill",
            "healthbench",
            "hallu",
            "osce",
        ]
    )


register_schema("demo_schema", DemoConfig)


def _steps(cfg: DemoConfig, out: Path) -> dict[str, list[str]]:
    py = [sys.executable, "-m"]
    model = "model=models:/m3-base@candidate"
    tokens = f"generation.max_new_tokens={cfg.max_new_tokens}"
    return {
        "base": py + ["m3.cli", "base", f"model={cfg.model}"],
        **{
            f"expert_{e}": py
            + [
                "stage1_expert_rl",
                f"expert={e}",
                f"steps={cfg.expert_steps}",
                "n_prompts=4",
                "prompts_per_step=1",
                "rl.group_size=4",
                f"summary_out={out / f'expert_{e}.json'}",
            ]
            for e in ("inquiry", "healthcare", "general")
        },
        "distill": py
        + ["stage2_distill", f"steps={cfg.distill_steps}", f"summary_out={out / 'distill.json'}"],
        "healthbench": py
        + [
            "eval.healthbench",
            "run",
            model,
            f"n_examples={cfg.healthbench_examples}",
            f"judge.backend={cfg.judge}",
            tokens,
            f"summary_out={out / 'healthbench.json'}",
        ],
        "hallu": py
        + [
            "eval.hallu",
            model,
            f"n_examples={cfg.hallu_examples}",
            tokens,
            f"summary_out={out / 'hallu.json'}",
        ],
        "osce": py
        + [
            "eval.osce",
            model,
            f"n_cases={cfg.osce_cases}",
            f"judge.backend={cfg.judge}",
            f"episode.max_inquiry_turns={cfg.osce_inquiry_turns}",
            tokens,
            f"summary_out={out / 'osce.json'}",
        ],
    }


def _summary_base(out: Path) -> dict:
    mv = registry.get_version("models:/m3-base@candidate")
    return {"step": "base", "metric": "registered", "value": f"m3-base v{mv.version}", "backend": "-"}


def main(overrides: list[str] | None = None) -> int:
    cfg: DemoConfig = compose("demo", overrides)
    out = (REPO_ROOT / cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    commands = _steps(cfg, out)
    unknown = [s for s in cfg.steps if s not in commands]
    if unknown:
        raise ValueError(f"unknown demo steps {unknown}; available: {list(commands)}")
    rows = []
    for i, step in enumerate(cfg.steps, 1):
        print(f"\n== [{i}/{len(cfg.steps)}] {step}: {' '.join(commands[step][2:])}", flush=True)
        t0 = time.time()
        rc = subprocess.run(commands[step], cwd=REPO_ROOT).returncode
        if rc != 0:
            print(
                f"demo: step {step!r} failed (exit {rc}); fix it and re-run `make demo` to resume",
                file=sys.stderr,
            )
            return rc
        summary = _summary_base(out) if step == "base" else json.loads((out / f"{step}.json").read_text())
        summary["seconds"] = round(time.time() - t0, 1)
        rows.append(summary)
    print("\n| step | key metric | value | backend | s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['metric']} | {r['value']} | {r['backend']} | {r['seconds']} |")
    print(
        "\nRegistered models: `.venv/bin/m3 registry ls`. Browse runs and models: `make ui` "
        "(MLflow on http://127.0.0.1:5000)."
    )
    return 0
