"""The verl reward entry point of stage 1 (expert RL): one `compute_score`, routed by data_source.

    reward.custom_reward_function.path=pkg://m3.rl.rewards      # name defaults to compute_score
    reward.reward_manager.name=naive                          # or rate_limited for API judges

verl 0.9.1 (`verl.trainer.ppo.reward.get_custom_reward_fn`) imports `pkg://m3.rl.rewards` with
`importlib.import_module("m3.rl.rewards")`, wraps the async `compute_score` with
`reward.custom_reward_function.reward_kwargs` as extra keyword arguments, and the reward-loop
manager awaits it once per rollout (`NaiveRewardManager.run_single`). The returned dict's "score"
becomes `reward_score`; every other key is logged as reward extra info.

Routes (`data_source`):
    m3_inquiry                 Clinical-Inquiry expert (SPAR). R_global of the consultation, two modes
                               (`InquiryRewardConfig.r_global`):
                               "case_rubric" (default, the method): R_global = R_task (eq. 1) of the
                                   whole trajectory against the case's clinical rubric
                                   (`m3.clinic.rubric`: history, red flags and unsafe advice; DDX;
                                   tests; the diagnosis and, as a NEGATIVE item, an off-branch one),
                                   restricted to the row's stages. Verdicts from the case's own
                                   verifiers (`rubric_judge="clinic"`) or the process-wide rubric judge
                                   over the trajectory text (`rubric_judge="judge"`).
                               "stage_weighted" (our earlier proxy, kept as an option):
                                   R_stages = sum_k w_k * clip(G_k) / sum_k w_k    over the row's stages
                                   R_global = (1 - rho) * R_stages + rho * R_task   if rubrics, else R_stages
                                   G_k = `extra_info["stage_scores"]` from the agent loop (recomputed from
                                   `case` + `transcript` when absent); weights inquiry 0.4, ddx 0.15,
                                   lab 0.15, diagnosis 0.3; G_diag clipped to [0, 1] (here the
                                   off-branch -0.2 is clipped away); R_task (rho = 0.5) is eq. 1 on the
                                   doctor's turns when `extra_info["rubrics"]` holds HealthBench items.
                               Both stay in [0, 1]: SPAR scales R_global by gamma_j <= 1, and on a
                               negative R_global a violation would RAISE the step reward. Only R_global
                               is returned; the agent loop's output spreads gamma_j itself.
    m3_healthcare, healthbench Healthcare expert: `m3.facts.reward.compute_score` (R_task + gated R_fact).
    m3_general                 General expert: IFEval-style checks of `extra_info["constraints"]`
                               (CONSTRAINTS below; fraction satisfied) and, when `ground_truth` is
                               given, exact match of the final answer (last \\boxed{...}, else the text
                               after the last "Answer:"). score = mean of the parts present.

Qwen3 reasoning: only the answer is scored (`m3.text.reasoning.answer_text`: the text after the
last `</think>`; a completion cut off inside its reasoning has no answer).

Each route returns a fixed key set (NaN where a part does not apply), because verl stacks extra
info by the first sample's keys: a batch must not mix routes.

Run: `.venv/bin/python -m pytest tests/m3/test_rewards.py -q`
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from m3.clinic.transcript import STAGES
from m3.text.reasoning import answer_text

INQUIRY = "m3_inquiry"
HEALTHCARE = ("m3_healthcare", "healthbench")
GENERAL = "m3_general"
KNOWN = (INQUIRY, *HEALTHCARE, GENERAL)


# --- m3_inquiry --------------------------------------------------------------------------------
@dataclass
class InquiryRewardConfig:
    # OPEN in the paper (it gives no weights): the inquiry is what the expert is trained for and
    # the diagnosis is the outcome; DDX and lab are intermediate stages.
    stage_weights: dict[str, float] = field(
        default_factory=lambda: {"inquiry": 0.4, "ddx": 0.15, "lab": 0.15, "diagnosis": 0.3}
    )
    rubric_weight: float = 0.5  # rho (stage_weighted): share of R_task when the row has rubrics
    r_global: str = "case_rubric"  # case_rubric (the method) | stage_weighted (the earlier proxy)
    rubric_judge: str = (
        "clinic"  # case_rubric verdicts: clinic (the case's verifiers) | judge (LLM/offline judge)
    )

    def __post_init__(self) -> None:
        if self.r_global not in ("case_rubric", "stage_weighted"):
            raise ValueError(f"r_global must be case_rubric or stage_weighted, got {self.r_global!r}")
        if self.rubric_judge not in ("clinic", "judge"):
            raise ValueError(f"rubric_judge must be clinic or judge, got {self.rubric_judge!r}")
        if set(self.stage_weights) != set(STAGES):
            raise ValueError(
                f"stage_weights needs exactly the keys {list(STAGES)}, got {sorted(self.stage_weights)}"
            )
        if any(w < 0 for w in self.stage_weights.values()):
            raise ValueError(f"stage_weights must be >= 0, got {self.stage_weights}")
        if not 0.0 <= self.rubric_weight <= 1.0:
            raise ValueError(f"rubric_weight must lie in [0, 1], got {self.rubric_weight}")


def stage_reward(scores: dict[str, float], stages: list[str], weights: dict[str, float]) -> float:
    """R_stages = sum_k w_k clip(G_k) / sum_k w_k over `stages`; a stage not reached counts 0; in [0, 1]."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; stages are {list(STAGES)}")
    total = sum(weights[k] for k in stages)
    if total == 0:
        raise ValueError(f"stage_weights of the row's stages {stages} sum to 0: R_stages is undefined")
    # clip: G_diag's off-branch penalty would make R negative, and gamma_j * R must not reward violations
    return sum(weights[k] * min(max(float(scores.get(k, 0.0)), 0.0), 1.0) for k in stages) / total


def _doctor_text(transcript) -> str:
    """What the rubric judge grades: the doctor's turns in order, think blocks dropped, stage-labelled."""
    return "\n\n".join(f"[{t.stage}] {answer_text(t.text)}" for t in transcript.doctor_turns())


async def _inquiry(extra_info: dict, config: InquiryRewardConfig) -> dict:
    from m3.clinic.transcript import Transcript

    if "transcript" not in extra_info:
        raise ValueError(
            f"{INQUIRY}: extra_info has no 'transcript'; run the rollout with the m3_consultation agent loop "
            "(actor_rollout_ref.rollout.agent.default_agent_loop=m3_consultation)"
        )
    transcript = Transcript.from_dict(extra_info["transcript"])
    case = _case(extra_info)
    scores = extra_info.get("stage_scores")
    if scores is None:  # rescoring a stored transcript offline: recompute G_k from the case
        from m3.clinic.verifiers import stage_scores

        if case is None:
            raise ValueError(f"{INQUIRY}: extra_info needs 'stage_scores' or 'case' to score the transcript")
        scores = stage_scores(case, transcript)
    # explicit None checks: a parquet row may hand lists over as numpy arrays (no truth value)
    stages = list(STAGES if extra_info.get("stages") is None else extra_info["stages"])
    r_stages = stage_reward(scores, stages, config.stage_weights)

    r_task = math.nan
    r_global = r_stages
    rubrics = list(extra_info.get("rubrics") if extra_info.get("rubrics") is not None else [])
    if config.r_global == "case_rubric":
        if case is None:
            raise ValueError(f"{INQUIRY}: r_global=case_rubric needs extra_info['case'] (its rubric)")
        r_task = await _case_rubric_reward(
            case, transcript, stages, config, extra_info.get("step_violations")
        )
        r_global = r_stages if r_task is None else r_task  # no item for these stages: the stage scores
        r_task = math.nan if r_task is None else r_task
    elif rubrics:
        # one judge per process, shared with the healthcare route (same env settings, one client)
        from m3.facts.reward import _rubric_verifier
        from m3.judges.base import RubricItem

        items = [RubricItem(r["criterion"], float(r["points"]), tuple(r.get("tags", ()))) for r in rubrics]
        msgs = transcript.doctor_messages()
        opening = msgs[: next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))]
        r_task = (await _rubric_verifier().score(opening, _doctor_text(transcript), items)).reward
        r_global = (1 - config.rubric_weight) * r_stages + config.rubric_weight * r_task

    violations = list(extra_info.get("step_violations", []))
    n_steps = len(extra_info.get("step_gammas", violations))
    return {
        "score": r_global,
        "r_stages": r_stages,
        "r_task": r_task,
        **{f"g_{k}": float(scores[k]) if k in scores else math.nan for k in STAGES},  # raw G_k
        "violation_rate": sum(bool(v) for v in violations) / n_steps if n_steps else 0.0,
        "n_steps": n_steps,
    }


def _case(extra_info: dict):
    from m3.clinic.cases import ClinicalCase

    case = extra_info.get("case")
    if case is None:
        return None
    return ClinicalCase.from_dict(json.loads(case) if isinstance(case, str) else dict(case))


async def _case_rubric_reward(
    case, transcript, stages, config: InquiryRewardConfig, violations
) -> float | None:
    """R_task of the trajectory against the case's clinical rubric (m3.clinic.rubric), eq. 1."""
    from m3.clinic import rubric

    if config.rubric_judge == "judge":
        from m3.facts.reward import _rubric_verifier

        return await rubric.r_global_judged(case, transcript, _rubric_verifier(), stages)
    return rubric.r_global(case, transcript, stages, violations=violations)


# --- m3_general --------------------------------------------------------------------------------
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)


def _words(text: str) -> list[str]:
    return re.findall(r"\b\w+(?:['-]\w+)*\b", text)


def _json_ok(text: str) -> bool:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())  # a fenced block is still JSON output
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return False
    return True


def _has(text: str, kw: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(kw.lower())}(?!\w)", text.lower()) is not None


# type -> (needs a "value", check(text, value)). Keywords match case-insensitively as whole words;
# bullets are lines starting with -, *, • or "1." / "1)"; paragraphs are blocks split by blank lines.
CONSTRAINTS = {
    "max_words": (True, lambda t, v: len(_words(t)) <= int(v)),
    "min_words": (True, lambda t, v: len(_words(t)) >= int(v)),
    "include_keywords": (True, lambda t, v: all(_has(t, k) for k in v)),
    "exclude_keywords": (True, lambda t, v: not any(_has(t, k) for k in v)),
    "num_bullets": (True, lambda t, v: len(_BULLET.findall(t)) == int(v)),
    "num_paragraphs": (True, lambda t, v: len([p for p in re.split(r"\n\s*\n", t) if p.strip()]) == int(v)),
    "json_format": (False, lambda t, v: _json_ok(t)),
    "lowercase": (False, lambda t, v: t == t.lower()),
    "uppercase": (False, lambda t, v: t == t.upper()),
    "starts_with": (True, lambda t, v: t.strip().startswith(str(v))),
    "ends_with": (True, lambda t, v: t.strip().endswith(str(v))),
    "no_commas": (False, lambda t, v: "," not in t),
}


def check_constraint(text: str, constraint: dict) -> bool:
    kind = constraint.get("type")
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint type {kind!r}; known: {sorted(CONSTRAINTS)}")
    needs_value, check = CONSTRAINTS[kind]
    if needs_value and "value" not in constraint:
        raise ValueError(f"constraint {kind!r} needs a 'value', e.g. {{'type': {kind!r}, 'value': ...}}")
    return bool(check(text, constraint.get("value")))


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced: no final answer


def final_answer(text: str) -> str | None:
    """The last \\boxed{} content, else the line after the last "Answer:", else None."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    parts = re.split(r"answer\s*:", text, flags=re.IGNORECASE)
    return parts[-1].strip().splitlines()[0] if len(parts) > 1 and parts[-1].strip() else None


def normalize_answer(ans: str) -> str:
    """Case, spaces, surrounding $ / ** / quotes, a trailing period, \\text{}, thousands commas."""
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", ans.strip())
    s = s.strip().rstrip(".").strip("$*\"'` ").rstrip(".").strip()  # "$1,000$." and "**B**."
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)
    s = re.sub(r"\s+", " ", s.lower())
    try:  # numbers compare by value: "3.50" == "3.5"
        return repr(float(s))
    except ValueError:
        return s


async def _general(answer: str, ground_truth, extra_info: dict) -> dict:
    raw = extra_info.get("constraints")
    # parquet rows carry the list as a JSON string (a constraint's value is an int in one item and
    # a list in the next, which one parquet column cannot hold); in-memory rows may pass the list
    constraints = list(json.loads(raw) if isinstance(raw, str) else raw or [])
    has_truth = ground_truth is not None and str(ground_truth).strip() != ""
    if not constraints and not has_truth:
        raise ValueError(
            f"{GENERAL}: the row has neither extra_info['constraints'] nor a ground_truth to check"
        )
    parts = []
    following = math.nan
    if constraints:
        following = sum(check_constraint(answer, c) for c in constraints) / len(constraints)
        parts.append(following)
    correct = math.nan
    if has_truth:
        pred = final_answer(answer)
        correct = float(pred is not None and normalize_answer(pred) == normalize_answer(str(ground_truth)))
        parts.append(correct)
    return {
        "score": sum(parts) / len(parts),
        "instruction_following": following,
        "n_constraints": len(constraints),
        "answer_correct": correct,
    }


# --- entry point -------------------------------------------------------------------------------
async def compute_score(
    data_source: str, solution_str: str, ground_truth=None, extra_info: dict | None = None, **kwargs
) -> dict:
    """verl reward function (async), routed by `data_source` (see the module docstring).

    kwargs (from `reward.custom_reward_function.reward_kwargs`): `inquiry` (dict of
    InquiryRewardConfig fields); for the healthcare route `rubric_pool` (the dynamic rubric pool
    file) and `fact_aware` (False: R_task only, the ablation). verl's own extras (e.g.
    reward_router_address) are accepted and unused.
    """
    info = dict(extra_info or {})
    if data_source == INQUIRY:
        overrides = dict(kwargs.get("inquiry") or {})
        known = {f.name for f in dataclasses.fields(InquiryRewardConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"reward_kwargs.inquiry: unknown keys {sorted(unknown)}; use {sorted(known)}")
        return await _inquiry(info, InquiryRewardConfig(**overrides))
    if data_source in HEALTHCARE:
        from m3.facts import reward as facts_reward

        passed = {k: kwargs[k] for k in ("rubric_pool", "fact_aware") if k in kwargs}
        return await facts_reward.compute_score(
            data_source, answer_text(solution_str), ground_truth, info, **passed
        )
    if data_source == GENERAL:
        return await _general(answer_text(solution_str), ground_truth, info)
    raise ValueError(f"unknown data_source {data_source!r}; m3.rl.rewards knows {list(KNOWN)}")
