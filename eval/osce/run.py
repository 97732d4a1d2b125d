"""SCAN-bench-style OSCE: three stations over clinical cases, a model consulting a simulated patient.

    python -m eval.osce                                             # m3-base, 5 sample cases, offline
    python -m eval.osce model=models:/m3-mopd@candidate cases=data/agentclinic_medqa.jsonl n_cases=null
    python -m eval.osce endpoint=http://127.0.0.1:8000/v1 endpoint_model=m3 simulator.backend=openai ...

Each case runs the four-stage consultation (m3.clinic.episode) against the patient simulator and
is scored by the stage verifiers (m3.clinic.verifiers):
  station 1, inquiry:   coverage_weight x checklist coverage (weighted by criticality, trivial
                        repeats excluded) + (1 - coverage_weight) x the mean of four process
                        dimensions graded by the judge over the WHOLE inquiry (every doctor turn of
                        the inquiry stage with the patient's answers): safety stratification,
                        clarity, association, normative output
  station 2, lab:       differential first (G_ddx reported), then tests: weighted F1 over the
                        38-category catalogue with extra weight on essential tests
  station 3, diagnosis: hierarchical ICD-10 match (penalty off-branch)
Step violations (m3.clinic.steps) are reported as rates. Resumable: one line per finished case in
`<out_dir>/cases.jsonl` with its transcript; a re-run skips finished cases.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from eval.common import evaluated_model, read_jsonl_resumable, record_run, repo_path, run_dir
from eval.osce.doctors import build_doctor
from m3 import registry
from m3.clinic.case_files import read_cases
from m3.clinic.cases import ClinicalCase
from m3.clinic.episode import EpisodeConfig, plan_interruptions, run_consultation
from m3.clinic.patient.config import SimulatorConfig
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.steps import StepVerifierConfig, verify_steps
from m3.clinic.transcript import Transcript
from m3.clinic.verifiers import VerifierConfig, stage_scores
from m3.config import TrackingConfig, register_schema
from m3.judges.base import RubricItem
from m3.judges.config import JudgeConfig, build_rubric_judge, judge_backend_name

# The four process dimensions of SCAN-bench's inquiry station, as rubric items for the judge.
PROCESS_ITEMS = {
    "safety_stratification": RubricItem(
        "Screens for red-flag symptoms relevant to the complaint and escalates (urgent care, emergency "
        "advice) when the answers warrant it.",
        5,
    ),
    "clarity": RubricItem(
        "Asks clear, focused questions, one at a time, in plain language the patient understands.", 5
    ),
    "association": RubricItem(
        "Each question follows logically from the complaint and the patient's previous answers, building "
        "toward a diagnosis.",
        5,
    ),
    "normative_output": RubricItem(
        "Uses professional, normative medical communication: a courteous opening, standard terminology "
        "explained to the patient, and a clear close of the history taking.",
        5,
    ),
}
# OPEN in SCAN-bench (it says "coverage ... plus process quality" without weights): coverage is
# what the checklist measures objectively, so it carries most of the station.
COVERAGE_WEIGHT = 0.7


@dataclass
class DoctorGeneration:
    max_new_tokens: int = 128
    temperature: float = 0.0
    enable_thinking: bool = False


@dataclass
class OsceRunConfig:
    model: str | None = "models:/m3-base@candidate"
    endpoint: str | None = None
    endpoint_model: str = "default"
    endpoint_api_key_env: str = "OPENAI_API_KEY"
    cases: str = "data/agentclinic_medqa.jsonl"
    strict_cases: bool = False  # an unusable record fails the run instead of being skipped (and listed)
    n_cases: int | None = 5
    seed: int = 0
    out_dir: str | None = None
    summary_out: str | None = None
    generation: DoctorGeneration = field(default_factory=DoctorGeneration)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    steps: StepVerifierConfig = field(default_factory=StepVerifierConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # station 1 = w * checklist coverage + (1 - w) * mean process dimension (OPEN; see COVERAGE_WEIGHT)
    coverage_weight: float = COVERAGE_WEIGHT
    concurrent_cases: int = (
        1  # consultations at once: a batching engine (vLLM, LocalChat) serves them together
    )
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.coverage_weight <= 1.0:
            raise ValueError(f"coverage_weight must lie in [0, 1], got {self.coverage_weight}")
        if not self.model and not self.endpoint:
            raise ValueError("set `model=models:/...` (or a directory) or `endpoint=http://.../v1`")
        if self.n_cases is not None and self.n_cases < 1:
            raise ValueError(f"n_cases must be >= 1 (or null for every case), got {self.n_cases}")


register_schema("osce_schema", OsceRunConfig)


def inquiry_dialogue(t: Transcript) -> tuple[list[dict], str]:
    """What the process dimensions grade: (the opening the doctor saw, the whole inquiry).

    The opening is the system prompt and the inquiry instruction with the patient's first words;
    the inquiry is every turn of the inquiry stage after it, in order: each doctor question with the
    patient's answer (and any interruption the doctor saw), as "Doctor: ..." / "Patient: ..." lines.
    """
    inquiry = [turn for turn in t.turns if turn.stage == "inquiry"]
    first = next((i for i, turn in enumerate(inquiry) if turn.role == "doctor"), len(inquiry))
    opening = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
    opening.append({"role": "user", "content": "\n\n".join(turn.text for turn in inquiry[:first])})
    speaker = {"doctor": "Doctor", "patient": "Patient", "interrupt": "Patient", "instruction": "Instruction"}
    lines = [f"{speaker[turn.role]}: {turn.text}" for turn in inquiry[first:]]
    return opening, "\n".join(lines)


async def process_scores(judge, t: Transcript) -> dict[str, float]:
    """The four process dimensions: each a rubric item graded over the whole inquiry."""
    opening, dialogue = inquiry_dialogue(t)
    verdicts = await judge.grade_items(opening, dialogue, list(PROCESS_ITEMS.values()))
    return {k: float(bool(v.criteria_met)) for k, v in zip(PROCESS_ITEMS, verdicts, strict=True)}


def inquiry_station(coverage: float, process: dict[str, float], coverage_weight: float) -> float:
    """Station 1 = w * checklist coverage + (1 - w) * mean of the process dimensions, in [0, 1]."""
    return coverage_weight * coverage + (1.0 - coverage_weight) * sum(process.values()) / len(process)


async def evaluate_case(
    cfg: OsceRunConfig, case: ClinicalCase, doctor, patient, judge, interruption: str | None = None
) -> dict:
    rng = random.Random(f"{cfg.seed}:{case.case_id}")  # per case: resumed runs replay the same draws
    t = await run_consultation(case, doctor, patient, cfg.episode, rng, interruption)
    g = stage_scores(case, t, cfg.verifier)
    violations = verify_steps(t, cfg.steps)
    kinds = [v.kind for step in violations for v in step]
    process = await process_scores(judge, t)
    return {
        "case_id": case.case_id,
        "diagnosis": case.diagnosis.text,
        "stations": {
            "inquiry": inquiry_station(g.get("inquiry", 0.0), process, cfg.coverage_weight),
            "lab": g.get("lab", 0.0),
            "diagnosis": g.get("diagnosis", 0.0),
        },
        "coverage": g.get("inquiry", 0.0),
        "ddx": g.get("ddx", 0.0),
        "process": process,
        "n_steps": len(violations),
        "violations": {k: kinds.count(k) for k in sorted(set(kinds))},
        "interrupted": t.interrupted,
        "ended_by": t.ended_by,
        "transcript": t.to_dict(),
    }


def aggregate(rows: list[dict]) -> dict[str, float]:
    """Station and dimension means (x100, as SCAN-bench reports) and violation rates per step."""
    n = len(rows)
    out: dict[str, float] = {"n_cases": n}
    for s in ("inquiry", "lab", "diagnosis"):
        out[f"station_{s}"] = 100 * sum(r["stations"][s] for r in rows) / n
    out["ddx"] = 100 * sum(r["ddx"] for r in rows) / n
    out["inquiry_coverage"] = 100 * sum(r.get("coverage", r["stations"]["inquiry"]) for r in rows) / n
    for d in PROCESS_ITEMS:
        out[f"process_{d}"] = 100 * sum(r["process"][d] for r in rows) / n
    steps = sum(r["n_steps"] for r in rows) or 1
    for kind in sorted({k for r in rows for k in r["violations"]}):
        out[f"violation_rate_{kind}"] = sum(r["violations"].get(kind, 0) for r in rows) / steps
    return out


def plot_stations(metrics: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        "station_inquiry",
        "station_lab",
        "station_diagnosis",
        "ddx",
        *[f"process_{d}" for d in PROCESS_ITEMS],
    ]
    fig, ax = plt.subplots(figsize=(9, 4))
    bars = ax.bar(
        [k.replace("station_", "").replace("process_", "") for k in keys],
        [metrics[k] for k in keys],
        color=["#4C72B0"] * 3 + ["#8172B2"] + ["#55A868"] * 4,
    )
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(min(0, min(metrics[k] for k in keys)) - 5, 105)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"OSCE stations and process dimensions ({metrics['n_cases']:.0f} cases)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(cfg: OsceRunConfig) -> dict:
    registry.setup(cfg.tracking.experiment)
    model_ref, pinned = evaluated_model(cfg)
    found = read_cases(repo_path(cfg.cases), strict=cfg.strict_cases)
    cases = found.cases
    if cfg.n_cases is not None:
        cases = cases[: cfg.n_cases]  # the first n: station scores stay comparable across runs
    out = run_dir(cfg, "osce", cfg.cases, model_ref)
    path = out / "cases.jsonl"
    done = {row["case_id"]: row for row in read_jsonl_resumable(path)}
    todo = [c for c in cases if c.case_id not in done]
    plan = plan_interruptions([c.case_id for c in cases], cfg.episode, cfg.seed)  # over the evaluated set
    if todo:
        doctor, patient, judge = (
            build_doctor(cfg),
            PatientSimulator(cfg.simulator),
            build_rubric_judge(cfg.judge),
        )

        gate = asyncio.Semaphore(cfg.concurrent_cases)
        bar = tqdm(total=len(todo), desc="osce", unit="case")

        async def one(case: ClinicalCase) -> None:
            async with gate:
                row = await evaluate_case(cfg, case, doctor, patient, judge, plan[case.case_id])
            with open(path, "a") as f:  # one line per finished case: a killed run resumes
                f.write(json.dumps(row) + "\n")
            done[case.case_id] = row
            bar.update()

        async def run_all() -> None:
            try:
                await asyncio.gather(*(one(c) for c in todo))
            finally:
                bar.close()
                await judge.aclose()
                await doctor.aclose()

        asyncio.run(run_all())
    rows = [done[c.case_id] for c in cases]
    metrics = aggregate(rows)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_stations(metrics, out / "stations.png")
    judge_name = judge_backend_name(cfg.judge)
    backend = f"simulator:{cfg.simulator.backend}, judge:{judge_name}"
    summary = {
        "step": "osce",
        "metric": "inquiry/lab/diagnosis",
        "backend": backend,
        "model": model_ref,
        "value": "/".join(f"{metrics[f'station_{s}']:.1f}" for s in ("inquiry", "lab", "diagnosis")),
        "skipped_records": found.summary()["skipped_records"],  # file:line: reason of unusable cases
        "metrics": metrics,
        "out_dir": str(out),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    record_run(
        cfg,
        kind="osce",
        run_name=f"osce-{Path(cfg.cases).stem}",
        model_ref=model_ref,
        pinned=pinned,
        tags={"m3.judge": judge_name, "m3.simulator": cfg.simulator.backend},
        metrics=metrics,
        artifacts=[out / n for n in ("metrics.json", "cases.jsonl", "stations.png", "summary.json")],
        link={"stations": summary["value"], "backend": backend},
        summary=summary,
    )
    print(
        f"OSCE {cfg.cases} ({len(rows)} cases, {backend}): inquiry/lab/diagnosis = {summary['value']} -> {out}"
    )
    return summary
