"""SPAR's segmented pipeline scheduler: per-stage task pools with a quality gate (docs/formulas.md, SPAR).

A task is (case, transcript so far, next stage). A consultation's four stages (inquiry -> ddx -> lab
-> diagnosis) are trained as separate segments, and one training step mixes stages of different
cases: "step 4 trains Inq of case 4, DDX of case 3, Lab of case 2, Diag of case 1". After the
rollouts of stage k are scored, x_{k+1} = [x_k, y_k, p_{k+1}] enters stage k+1's pool only if the
stage verifier score V_k >= tau_k; the transcript is carried, never regenerated (the next stage's
agent-loop row gets it as extra_info["transcript"] and appends p_{k+1}).

    sched = PipelineScheduler(PipelineConfig(gate_tau=0.5))
    sched.add_cases(load_cases("data/agentclinic_medqa.jsonl"))
    for step in range(n_steps):
        tasks = sched.next_batch(batch_size)
        rows = sched.to_rows(tasks)                # "m3_consultation" rows for verl or the local engine
        ...                                    # rollouts; transcript_i, V_i = stage_scores(...)[stage]
        for task, transcript, score in results:
            sched.report(task, transcript, score)
        log(sched.metrics())

Batch mixing rule (ours; the paper gives only the example). Each stage has a quota of
batch_size // K slots (the remainder to the most advanced stages). A stage that cannot fill its
quota hands its slots to the in-flight stages (ddx, lab, diagnosis) in order most advanced first,
so started cases finish and no pool grows without bound. New cases enter only through the inquiry
quota: the admission rate equals the rate at which the pipeline drains, as in a hardware pipeline,
which gives exactly the paper's pattern (steps 1..K-1 are a shorter warm-up). Set
`fill_idle_slots=True` to give the slots still free to extra new cases (full batches during warm-up
and after gate failures, at the price of cases moving in waves). Within a pool the oldest task
goes first.

Groups: with n rollouts per task, report the one transcript that is carried on (`report_group`
takes the best-scoring rollout). tau is OPEN in the paper: `gate_tau` (default 0.5, on the [0, 1]
scale of G_inquiry, G_ddx and G_lab; G_diag lies in [-0.2, 1]) with per-stage overrides in
`stage_tau`. The diagnosis gate only feeds the pass-rate metric (there is no stage after it).
State is JSON (`state_dict` / `load_state_dict`) so a run resumes with the same pools.
Run the tests: `pytest tests/stage1_expert_rl/test_pipeline.py`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from m3.clinic.cases import ClinicalCase
from m3.clinic.episode import EpisodeConfig, plan_interruptions, start
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.transcript import STAGES, Transcript

K = len(STAGES)
_PATIENT = PatientSimulator()  # offline: only its template opening is used here


@dataclass
class PipelineConfig:
    gate_tau: float = 0.5  # OPEN: V_k threshold for entering stage k+1's pool
    stage_tau: dict[str, float] = field(default_factory=dict)  # per-stage override, e.g. {"ddx": 0.3}
    fill_idle_slots: bool = False  # give slots no stage can use to extra new cases
    seed: int = 0  # copied into every row (interruption plan seed of the agent loop)

    def __post_init__(self) -> None:
        bad = sorted(set(self.stage_tau) - set(STAGES))
        if bad:
            raise ValueError(
                f"PipelineConfig.stage_tau has unknown stages {bad}; use keys from {list(STAGES)}"
            )

    def tau(self, stage: str) -> float:
        return float(self.stage_tau.get(stage, self.gate_tau))


@dataclass(frozen=True)
class Task:
    """Train `stage` of case `case_id`; `transcript` holds the earlier stages (None for inquiry)."""

    case_id: str
    stage: str
    transcript: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.case_id}:{self.stage}"  # a case visits each stage once


def _strip(transcript: Transcript) -> dict:
    """Transcript.to_dict without token lists: the next stage re-renders the prompt from text, and
    the state stays small."""
    d = transcript.to_dict()
    for turn in d["turns"]:
        turn["token_ids"], turn["logprobs"] = None, None
    return d


def _stage_counts() -> dict[str, dict[str, float]]:
    return {s: {"reported": 0, "passed": 0, "score_sum": 0.0} for s in STAGES}


class PipelineScheduler:
    """Pure scheduling: knows nothing of the policy; see the module docstring."""

    def __init__(self, cfg: PipelineConfig | None = None) -> None:
        self.cfg = cfg or PipelineConfig()
        self.cases: dict[str, dict] = {}  # case_id -> ClinicalCase.to_dict()
        self.interruptions: dict[str, str | None] = {}  # case_id -> planned interruption mode
        self.pools: dict[str, deque[Task]] = {s: deque() for s in STAGES}
        self.in_flight: dict[str, Task] = {}
        self.counts = _stage_counts()
        self.finished: list[str] = []  # cases that passed the diagnosis stage's gate
        self.stopped: list[str] = []  # cases a gate stopped (or that failed the diagnosis gate)
        self.step = 0

    # --- input ----------------------------------------------------------------------------
    def add_cases(self, cases: list) -> None:
        """Queue new cases (ClinicalCase) for the inquiry stage, in order; the interruption plan is
        drawn over each added set (m3.clinic.episode.plan_interruptions)."""
        for case in cases:
            if case.case_id in self.cases:
                raise ValueError(f"case {case.case_id!r} was already added; case ids must be unique")
            self.cases[case.case_id] = case.to_dict()
            self.pools["inquiry"].append(Task(case.case_id, "inquiry"))
        self.interruptions.update(
            plan_interruptions([c.case_id for c in cases], EpisodeConfig(), self.cfg.seed)
        )

    # --- batches --------------------------------------------------------------------------
    def quotas(self, batch_size: int) -> dict[str, int]:
        """batch_size // K slots per stage, the remainder to the most advanced stages."""
        base, extra = divmod(batch_size, K)
        return {s: base + (1 if i >= K - extra else 0) for i, s in enumerate(STAGES)}

    def next_batch(self, batch_size: int) -> list[Task]:
        """The tasks of the next training step (most advanced stage first); they are in flight
        until reported. Shorter than batch_size when the pools run low."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        quotas = self.quotas(batch_size)
        take = {s: min(quotas[s], len(self.pools[s])) for s in STAGES}
        free = batch_size - sum(take.values())
        for s in reversed(STAGES[1:]):  # unused slots to in-flight cases, most advanced first
            more = min(free, len(self.pools[s]) - take[s])
            take[s], free = take[s] + more, free - more
        if self.cfg.fill_idle_slots:
            more = min(free, len(self.pools["inquiry"]) - take["inquiry"])
            take["inquiry"] += more
        batch = [self.pools[s].popleft() for s in reversed(STAGES) for _ in range(take[s])]
        for task in batch:
            self.in_flight[task.key] = task
        self.step += 1
        return batch

    # --- results --------------------------------------------------------------------------
    def report(self, task: Task, transcript: Transcript, score: float) -> bool:
        """Apply stage k's gate to the carried rollout; True when the case moves on (or finished)."""
        if task.key not in self.in_flight:
            raise ValueError(f"task {task.key} is not in flight; report each task of next_batch() once")
        k = STAGES.index(task.stage)
        reached = tuple(s for s in STAGES if transcript.doctor_turns(s))
        if transcript.case_id != task.case_id or reached != STAGES[: k + 1]:
            raise ValueError(
                f"task {task.key}: the transcript (case {transcript.case_id!r}, stages {list(reached)}) must be "
                f"case {task.case_id!r} run through {list(STAGES[: k + 1])}; report the rollout of this task"
            )
        del self.in_flight[task.key]
        passed = float(score) >= self.cfg.tau(task.stage)
        c = self.counts[task.stage]
        c["reported"] += 1
        c["passed"] += int(passed)
        c["score_sum"] += float(score)
        if not passed:
            self.stopped.append(task.case_id)
        elif k + 1 < K:
            self.pools[STAGES[k + 1]].append(Task(task.case_id, STAGES[k + 1], _strip(transcript)))
        else:
            self.finished.append(task.case_id)
        return passed

    def report_group(self, task: Task, rollouts: list[tuple[Transcript, float]]) -> bool:
        """Report a group of n rollouts of one task: the best-scoring one is gated and carried."""
        if not rollouts:
            raise ValueError(f"task {task.key}: report_group needs at least one (transcript, score)")
        best = max(range(len(rollouts)), key=lambda i: rollouts[i][1])  # first of equal scores
        return self.report(task, *rollouts[best])

    # --- rows ---------------------------------------------------------------------------
    def to_rows(self, tasks: list[Task]) -> list[dict]:
        """Agent-loop rows ("m3_consultation", the stage-1 parquet schema) for `tasks`: extra_info
        "stages" = [the task's stage] and, past inquiry, "transcript" = the carried transcript."""
        rows = []
        for task in tasks:
            case = self.cases[task.case_id]
            extra: dict[str, Any] = {
                "case": json.dumps(case, ensure_ascii=False, sort_keys=True),
                "case_id": task.case_id,
                "stages": [task.stage],
                "seed": self.cfg.seed,
                "interruption": self.interruptions.get(task.case_id),
            }
            if task.transcript is None:  # x_1, as the data preparation writes it
                prompt = start(ClinicalCase.from_dict(case), _PATIENT, EpisodeConfig()).doctor_messages()
            else:
                extra["transcript"] = task.transcript
                prompt = Transcript.from_dict(task.transcript).doctor_messages()
            rows.append(
                {
                    "prompt": prompt,  # the context so far; the agent loop rebuilds it with p_{k+1}
                    "data_source": "m3_inquiry",
                    "ability": "clinical_inquiry",
                    "reward_model": {"style": "rule", "ground_truth": case["diagnosis"]["text"]},
                    "extra_info": extra,
                    "agent_name": "m3_consultation",
                }
            )
        return rows

    # --- metrics and state ----------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Flat, loggable: pipeline/<stage>/{pool, in_flight, reported, pass_rate, mean_score}."""
        out: dict[str, float] = {
            "pipeline/step": self.step,
            "pipeline/cases": len(self.cases),
            "pipeline/finished": len(self.finished),
            "pipeline/stopped": len(self.stopped),
        }
        for s in STAGES:
            c = self.counts[s]
            n = c["reported"]
            out[f"pipeline/{s}/pool"] = len(self.pools[s])
            out[f"pipeline/{s}/in_flight"] = sum(t.stage == s for t in self.in_flight.values())
            out[f"pipeline/{s}/reported"] = n
            out[f"pipeline/{s}/pass_rate"] = c["passed"] / n if n else 0.0
            out[f"pipeline/{s}/mean_score"] = c["score_sum"] / n if n else 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state. Tasks in flight go back to the front of their pools on load
        (their rollouts were lost with the crash), so nothing is dropped or run twice."""
        task = lambda t: {"case_id": t.case_id, "stage": t.stage, "transcript": t.transcript}  # noqa: E731
        return {
            "cfg": {
                "gate_tau": self.cfg.gate_tau,
                "stage_tau": dict(self.cfg.stage_tau),
                "fill_idle_slots": self.cfg.fill_idle_slots,
                "seed": self.cfg.seed,
            },  # fmt: skip
            "cases": self.cases,
            "interruptions": self.interruptions,
            "pools": {s: [task(t) for t in self.pools[s]] for s in STAGES},
            "in_flight": [task(t) for t in self.in_flight.values()],
            "counts": self.counts,
            "finished": list(self.finished),
            "stopped": list(self.stopped),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = json.loads(json.dumps(state))  # a deep copy; also rejects what JSON cannot hold
        self.cfg = PipelineConfig(**state["cfg"])
        self.cases = state["cases"]
        self.interruptions = state.get("interruptions", {})
        self.pools = {s: deque(Task(**t) for t in state["pools"][s]) for s in STAGES}
        for t in reversed(state["in_flight"]):
            self.pools[t["stage"]].appendleft(Task(**t))
        self.in_flight = {}
        self.counts = state["counts"]
        self.finished, self.stopped, self.step = state["finished"], state["stopped"], state["step"]
