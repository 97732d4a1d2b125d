"""`make demo`: the whole pipeline on the tiny preset, offline, each step resumable.

    base -> three experts -> distill -> MOPD -> Eagle3 draft -> W4 -> serve (transformers serve on
    127.0.0.1) -> HealthBench sample, HealthBench-Hallu, OSCE sample against the served endpoint -> report

With engine=vllm (`make demo PRESET=real ENGINE=vllm`, after `make setup-serve`) the serve step starts
vLLM's CPU build with m3-mopd and its Eagle3 draft instead, and the evaluations always go through it
(vLLM batches concurrent requests itself).

Each step is a separate command (stages never import each other; the demo only runs them), and
each one skips its work when its registered output or its results for the same config exist, so
re-running `make demo` resumes. Every step leaves a one-line summary JSON in `outputs/demo/`, from
which the closing table and the report (`outputs/demo/report.md`, also in MLflow) are built.
The server started by the serve step is stopped when the demo ends, also on failure or Ctrl-C.

    python -m demo                           # make demo
    python -m demo model=small_qwen3_moe     # the base preset
    python -m demo 'steps=[base,healthbench]'       # a subset (evals then run in-process on m3-mopd)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from m3 import registry
from m3.config import REPO_ROOT, compose, register_schema


@dataclass
class DemoConfig:
    """The pipeline's sizes. `preset=real` (configs/preset/real.yaml) swaps in the real model's."""

    model: str = "tiny_qwen3_moe"  # the model preset every step runs on (configs/model/)
    alias: str = "candidate"  # that preset's registry alias (the real preset registers under `real`)
    out_dir: str = "outputs/demo"
    healthbench_examples: int = 30  # the 30 real sample records shipped in data/
    hallu_examples: int = 10
    osce_cases: int = 5
    osce_inquiry_turns: int = 4
    osce_concurrency: int = 1  # consultations run at once (a batching engine serves them together)
    expert_steps: int = 3
    distill_steps: int = 10
    mopd_steps: int = 4
    draft_steps: int = 30
    quant_eval_examples: int = 4
    port: int = 8765  # the local server of the serve step (127.0.0.1)
    engine: str = "transformers"  # the serve step's engine: transformers | vllm (with the draft)
    judge: str = "offline"
    max_new_tokens: int = 64  # tiny models ramble: keep demo generations short
    baseline: bool = False  # also evaluate the base model: the eval rows read "base -> final"
    # the evaluations generate through the served endpoint (true) or in-process with batched HF
    # generation (false: a server answering one request at a time would take the real preset's OSCE
    # past the hour on 2 cores; the serve step still starts the server and smoke-tests it)
    eval_via_endpoint: bool = True
    step_args: dict[str, list[str]] = field(default_factory=dict)  # extra overrides per step (the preset's)
    steps: list[str] = field(default_factory=lambda: list(STEPS))

    def __post_init__(self) -> None:
        if self.engine not in ("transformers", "vllm"):
            raise ValueError(f"engine must be transformers or vllm, got {self.engine!r}")


STEPS = ("base", "expert_inquiry", "expert_healthcare", "expert_general", "distill", "mopd", "draft",
         "quant", "serve", "healthbench", "hallu", "osce", "report")  # fmt: skip
EVALS = ("healthbench", "hallu", "osce")


register_schema("demo_schema", DemoConfig)


def final_uri(cfg: DemoConfig) -> str:
    """The model the pipeline ships: evaluated, drafted, quantized, served."""
    return f"models:/m3-mopd@{cfg.alias}"


def _eval_command(cfg: DemoConfig, step: str, target: list[str], summary: Path) -> list[str]:
    tokens, judge = f"generation.max_new_tokens={cfg.max_new_tokens}", f"judge.backend={cfg.judge}"
    args = {
        "healthbench": ["eval.healthbench", "run", f"n_examples={cfg.healthbench_examples}", judge],
        "hallu": ["eval.hallu", f"n_examples={cfg.hallu_examples}"],
        "osce": ["eval.osce", f"n_cases={cfg.osce_cases}", judge, f"episode.max_inquiry_turns={cfg.osce_inquiry_turns}",
                 f"concurrent_cases={cfg.osce_concurrency}"],
    }[step]  # fmt: skip
    return [
        sys.executable,
        "-m",
        *args,
        *target,
        tokens,
        *cfg.step_args.get(step, []),
        f"summary_out={summary}",
    ]


def _command(cfg: DemoConfig, out: Path, step: str, serving: bool) -> list[str]:
    """The command of one step, built just before it runs (the evals need the served model's path)."""
    py = [sys.executable, "-m"]
    summary = f"summary_out={out / f'{step}.json'}"
    final = final_uri(cfg)
    extra = [*cfg.step_args.get(step, []), summary]
    preset = [f"model={cfg.model}"]
    if step in EVALS:
        if serving and (cfg.eval_via_endpoint or cfg.engine == "vllm"):
            target = [f"endpoint=http://127.0.0.1:{cfg.port}/v1", f"endpoint_model={_served_name(cfg)}"]
        else:
            target = [f"model={final}"]
        return _eval_command(cfg, step, target, out / f"{step}.json")
    if step == "base":
        return py + ["m3.cli", "base", *preset]
    if step.startswith("expert_"):
        e = step.removeprefix("expert_")
        return py + ["stage1_expert_rl", *preset, f"expert={e}", f"steps={cfg.expert_steps}", "n_prompts=4",
                     "prompts_per_step=1", "rl.group_size=4", *extra]  # fmt: skip
    if step == "distill":
        return py + ["stage2_distill", *preset, f"steps={cfg.distill_steps}", *extra]
    if step == "mopd":
        return py + ["stage3_mopd", *preset, f"steps={cfg.mopd_steps}", *extra]
    if step == "draft":
        return py + ["draft_eagle3", *preset, f"steps={cfg.draft_steps}", "prompts_per_domain=4",
                     "heldout_per_domain=1", "max_new_tokens=24", "eval_k=4", "eval_max_new_tokens=24",
                     "cpu_threads=1", *extra]  # fmt: skip
    if step == "quant":
        return py + ["quant", *preset, f"eval.healthbench_examples={cfg.quant_eval_examples}",
                     f"eval.max_new_tokens={cfg.max_new_tokens}", *extra]  # fmt: skip
    if step == "serve":  # the server is started by the demo (kept up for the evals); this is its smoke check
        return py + ["serve.smoke", "--base-url", f"http://127.0.0.1:{cfg.port}/v1", "--model",
                     _served_name(cfg), "--wait", "600", "--max-tokens", "16",
                     "--summary-out", str(out / "serve.json")]  # fmt: skip
    raise ValueError(f"unknown demo step {step!r}; available: {list(STEPS)}")


def _served_name(cfg: DemoConfig) -> str:
    """What requests send as `model`: transformers serve answers to the model's path, vLLM to the
    launcher's served_model_name."""
    return "m3" if cfg.engine == "vllm" else str(registry.resolve(final_uri(cfg)))


def _baseline(cfg: DemoConfig, out: Path, step: str, summary: dict) -> dict:
    """Evaluate the base model in-process on the same step, and read the row as "base -> final"."""
    path = out / f"{step}_base.json"
    if not path.is_file():
        cmd = _eval_command(cfg, step, [f"model=models:/m3-base@{cfg.alias}"], path)
        print(f"   baseline: {' '.join(cmd[2:])}", flush=True)
        if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
            raise RuntimeError(f"demo: the baseline evaluation of {step!r} failed; re-run to resume")
    base = json.loads(path.read_text())
    return {**summary, "value": f"base {base['value']} -> final {summary['value']}", "base": base}


def serve_command(cfg: DemoConfig, out: Path) -> list[str]:
    """`python -m serve` for the final model: transformers serve, or vLLM with the Eagle3 draft."""
    draft = [f"draft=models:/m3-draft@{cfg.alias}"] if cfg.engine == "vllm" else []
    return [sys.executable, "-m", "serve", f"model={final_uri(cfg)}", f"engine={cfg.engine}", *draft,
            f"port={cfg.port}", f"log_file={out / 'serve.log'}"]  # fmt: skip


def _start_server(cfg: DemoConfig, out: Path) -> subprocess.Popen:
    """`python -m serve` in the background (transformers serve on 127.0.0.1:port, log in out/)."""
    import socket

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", cfg.port)) == 0:
            raise ValueError(f"port {cfg.port} is in use: stop what listens there or pass port=<free port>")
    cmd = serve_command(cfg, out)
    print(f"   starting the server: {' '.join(cmd[2:])} (log: {out / 'serve.log'})", flush=True)
    return subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True)


def _stop_server(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # serve's launcher stops its engine's process group on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _summary_base(cfg: DemoConfig) -> dict:
    mv = registry.get_version(f"models:/m3-base@{cfg.alias}")
    return {
        "step": "base",
        "metric": "registered",
        "value": f"m3-base v{mv.version} @{cfg.alias}",
        "backend": cfg.model,
    }


def main(overrides: list[str] | None = None) -> int:
    cfg: DemoConfig = compose("demo", overrides)
    out = (REPO_ROOT / cfg.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    unknown = [s for s in cfg.steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown demo steps {unknown}; available: {list(STEPS)}")
    serving = "serve" in cfg.steps
    rows, server = [], None
    try:
        for i, step in enumerate(cfg.steps, 1):
            if step == "report":
                from demo import report

                (out / "rows.json").write_text(json.dumps(rows, indent=2))
                print(f"\n== [{i}/{len(cfg.steps)}] report: {report.write(out, rows, cfg.alias)}", flush=True)
                continue
            if step == "serve":
                server = _start_server(cfg, out)
            cmd = _command(cfg, out, step, serving)
            print(f"\n== [{i}/{len(cfg.steps)}] {step}: {' '.join(cmd[2:])}", flush=True)
            t0 = time.time()
            rc = subprocess.run(cmd, cwd=REPO_ROOT).returncode
            if rc != 0:
                print(
                    f"demo: step {step!r} failed (exit {rc}); fix it and re-run `make demo` to resume",
                    file=sys.stderr,
                )
                return rc
            summary = _summary_base(cfg) if step == "base" else json.loads((out / f"{step}.json").read_text())
            if cfg.baseline and step in EVALS:
                summary = _baseline(cfg, out, step, summary)
            summary["seconds"] = round(time.time() - t0, 1)
            summary["command"] = "python -m " + " ".join(
                a.replace(str(REPO_ROOT) + "/", "") for a in cmd[2:] if not a.startswith("summary_out=")
            )
            rows.append(summary)
    finally:
        _stop_server(server)
    print("\n| step | key metric | value | backend | s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['metric']} | {r['value']} | {r['backend']} | {r['seconds']} |")
    print(
        f"\nReport: {out / 'report.md'}. Registered models: `.venv/bin/m3 registry ls`. "
        "Browse runs and models: `make ui` (MLflow on http://127.0.0.1:5000)."
    )
    return 0
