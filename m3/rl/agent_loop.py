"""The consultation as a verl agent loop ("m3_consultation"): one SPAR rollout, token-in/token-out.

One rollout = the four-stage consultation of one case (`m3.clinic.episode`: Inquiry with the patient
simulator, then the single-turn DDX, Lab and Diagnosis stages) as ONE continuous token stream:

    prompt_ids    = chat template of [system, inquiry instruction with the patient's opening]
    response_ids  = doctor turn 1 | patient reply | doctor turn 2 | ... | DDX instruction | doctor turn | ...
    response_mask = 1 on the tokens the server generated, 0 on everything else

Tokens, never text, carry the policy's turns: the server's token_ids are appended as returned
(`AgentLoopBase.ct_merge_assistant_token`), and each new user turn (patient reply, interruption,
stage instruction) is rendered on its own by verl's Continuous Token builder and appended after
them (`ct_merge_context_msg`; for Qwen it also inserts the "\\n" the template puts after
<|im_end|>, with mask 0). Decoded text only feeds the simulator, the verifiers and the transcript.
A turn cut off by max_tokens gets a closing <|im_end|> (mask 0) before the next user turn.
A rollout whose sampling_params carry a `seed` sends each doctor turn with seed mix_seed(seed, turn)
(`m3.rl.seeds.mix_seed`): its draws are fixed by (seed, turn), not by what else the server runs.

Row format (verl dataset row; `extra_info` is a dict):
    extra_info["case"]           ClinicalCase.to_dict() (or that dict as a JSON string)  -- required
    extra_info["simulator"]      SimulatorConfig kwargs (default: offline backend)
    extra_info["episode"]        EpisodeConfig kwargs; extra_info["step_verifier"]: StepVerifierConfig kwargs
    extra_info["stages"]         consecutive stages to run (default all four); a list that does not
                                 start at "inquiry" needs extra_info["transcript"] = Transcript.to_dict()
                                 of the earlier stages (SPAR's segmented pipeline), which goes in the prompt
    extra_info["interruption"]   null | "mid_turn" | "end_of_turn": the row's entry of
                                 m3.clinic.episode.plan_interruptions (default null: none)
    extra_info["seed"]           seed of the interrupted turn's draw (default 0; mixed with case id and
                                 global step, so the n rollouts of a case in one step share the draw:
                                 the group baseline compares rollouts under the same conditions)
    extra_info["max_turn_tokens"]  cap on one doctor turn (default: the remaining response budget)
The row's own prompt column is not used: the prompt is rebuilt from the case.

Output (`ConsultationOutput`): extra_fields hold "transcript" (Transcript.to_dict without token
lists), per step "step_spans" ([start, end) in response tokens), "step_stages", "step_violations",
"step_gammas" (m3.clinic.steps), "stage_scores" (m3.clinic.verifiers), "ended_by", "stopped"
("response_length" / "max_assistant_turns" when the budget cut the consultation), "interrupted",
"case_id", and the server's min/max_global_steps (the v1 trainer's staleness tags need them).
The reward function returns R_global; `ConsultationOutput.as_dict` writes rm_scores with
`m3.rl.spar.encode_step_rewards(response_mask, R_global, step_gammas)`. verl 0.9.1 calls `as_dict` only
in the v1 trainer's TransferQueue worker (`verl.trainer.ppo.v1.agent_loop_tq.AgentLoopWorkerTQ.
_agent_loop_postprocess`), after the reward loop set reward_score; the legacy worker
(`AgentLoopWorker._postprocess`) puts reward_score at the last token instead, which SPAR would misread:
run SPAR with trainer.use_v1=True.

Limits: the offline simulator answers synchronously on the event loop (MiniLM retrieval, tens of
ms per reply); the step verifiers run in the loop's thread pool. A budget stop ends the whole
consultation, so later stages are then missing (their stage_scores keys are absent). Text only.

Registered in every verl process by `m3.rl.verl_plugin` (call `register()`); pick it with
`actor_rollout_ref.rollout.agent.default_agent_loop=m3_consultation`.
Run: `pytest tests/m3/test_agent_loop.py` (tiny model behind `m3.rl.local_server.LocalServer`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.agent_loop import register as register_agent_loop
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.utils.profiler import simple_timer

from m3.clinic.cases import ClinicalCase
from m3.clinic.episode import MODES, DoctorReply, EpisodeConfig, run_inquiry, run_stage, start
from m3.clinic.patient.config import SimulatorConfig
from m3.clinic.patient.simulator import PatientSimulator
from m3.clinic.steps import StepVerifierConfig, step_gammas, verify_steps
from m3.clinic.transcript import STAGES, Transcript
from m3.clinic.verifiers import stage_scores
from m3.rl.seeds import mix_seed
from m3.rl.spar import encode_step_rewards
from m3.text.reasoning import answer_text

NAME = "m3_consultation"
SINGLE_TURN_NAME = "m3_single_turn"  # single-turn rows in a SPAR batch (stage 3)
TURN_END = "<|im_end|>"  # ChatML: closes every turn; the Qwen3 templates the project uses are ChatML
_SIMULATORS: dict[SimulatorConfig, PatientSimulator] = {}  # one per config and process: keeps case indexes


class ConsultationOutput(AgentLoopOutput):
    """AgentLoopOutput whose rm_scores carry SPAR's per-step rewards (layout: m3.rl.spar docstring)."""

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()  # its rm_scores put R_global on the last token only
        if self.reward_score is not None:
            out["rm_scores"] = encode_step_rewards(
                self.response_mask, float(self.reward_score), self.extra_fields["step_gammas"]
            )
        return out


@dataclass
class EpisodeSpec:
    """What one row asks for, parsed from its extra_info (see the module docstring)."""

    case: ClinicalCase
    simulator: SimulatorConfig
    episode: EpisodeConfig
    step_verifier: StepVerifierConfig
    stages: tuple[str, ...]
    prior: Transcript | None
    seed: int
    max_turn_tokens: int | None
    interruption: str | None = None

    @classmethod
    def from_extra_info(cls, extra_info: Mapping[str, Any] | None) -> EpisodeSpec:
        if not isinstance(extra_info, Mapping) or "case" not in extra_info:
            raise ValueError(
                "the m3_consultation agent loop needs the row's extra_info['case'] = ClinicalCase.to_dict() "
                "(or its JSON string); build rows with the stage-1 data preparation"
            )
        raw_case = extra_info["case"]
        case = ClinicalCase.from_dict(json.loads(raw_case) if isinstance(raw_case, str) else dict(raw_case))
        stages = STAGES if extra_info.get("stages") is None else tuple(extra_info["stages"])
        first = STAGES.index(stages[0]) if stages and stages[0] in STAGES else -1
        if first < 0 or stages != STAGES[first : first + len(stages)]:
            raise ValueError(
                f"extra_info['stages']={list(stages)}: give consecutive stages of {list(STAGES)}"
            )
        prior = extra_info.get("transcript")
        prior = Transcript.from_dict(dict(prior)) if prior is not None else None
        reached = tuple(s for s in STAGES if prior is not None and prior.doctor_turns(s))
        if reached != STAGES[:first]:
            raise ValueError(
                f"stages {list(stages)} continue a consultation that reached {list(STAGES[:first])}, but "
                f"extra_info['transcript'] has doctor turns in {list(reached)}; pass the transcript of "
                "exactly the earlier stages (none when starting at 'inquiry')"
            )
        interruption = extra_info.get("interruption")
        if interruption not in (None, *MODES):
            raise ValueError(f"extra_info['interruption']={interruption!r}: use null or one of {MODES}")
        max_turn_tokens = extra_info.get("max_turn_tokens")
        if max_turn_tokens is not None and int(max_turn_tokens) < 1:
            raise ValueError(f"extra_info['max_turn_tokens']={max_turn_tokens} must be >= 1 (or absent)")
        return cls(
            case=case,
            simulator=_build(SimulatorConfig, extra_info.get("simulator"), "simulator"),
            episode=_build(EpisodeConfig, extra_info.get("episode"), "episode"),
            step_verifier=_build(StepVerifierConfig, extra_info.get("step_verifier"), "step_verifier"),
            stages=stages,
            prior=prior,
            seed=int(extra_info.get("seed", 0)),
            max_turn_tokens=None if max_turn_tokens is None else int(max_turn_tokens),
            interruption=interruption,
        )


def _build(cls: type, kwargs: Mapping[str, Any] | None, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(kwargs or {}) - names
    if unknown:
        raise ValueError(
            f"extra_info['{key}'] has unknown keys {sorted(unknown)}; {cls.__name__} takes {sorted(names)}"
        )
    return cls(**dict(kwargs or {}))


class _OutOfBudget(Exception):
    """The response budget (rollout.response_length or max_assistant_turns) ends the consultation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TokenDoctor:
    """An `m3.clinic.episode.Doctor` that keeps the rollout's token stream and calls the verl server.

    Called with the doctor's chat so far (Transcript.doctor_messages()): appends the new user turn's
    tokens (mask 0), generates, appends the generated tokens (mask 1) and returns their decoded text.
    """

    def __init__(
        self, loop: ConsultationAgentLoop, sampling_params: dict[str, Any], request_id: str, turn_cap: int
    ) -> None:
        self.loop = loop
        self.sampling_params = sampling_params
        # one id for all turns of a rollout: verl's router sends them to one server (prefix cache)
        self.request_id = request_id
        self.turn_cap = turn_cap
        self.ids: list[int] = []
        self.prompt_len = 0
        self.mask: list[int] = []
        self.logprobs: list[float] | None = [] if sampling_params.get("logprobs") else None
        self.messages: list[dict] = []  # the chat whose tokens are in self.ids
        self.spans: list[tuple[int, int]] = []  # [start, end) of each doctor turn in response positions
        self.metrics: dict[str, Any] = {"num_preempted": 0}
        self.server_fields: dict[str, Any] = {}

    async def __call__(self, messages: list[dict]) -> DoctorReply:
        loop, limit = self.loop, self.loop.response_length
        if loop.max_assistant_turns and len(self.spans) >= loop.max_assistant_turns:
            raise _OutOfBudget("max_assistant_turns")
        if not self.ids:
            self.ids = await loop.ct_build_initial_tokens(messages)
            self.prompt_len = len(self.ids)
        else:
            ids, mask, logprobs = self.ids, self.mask, self.logprobs
            # a doctor turn cut off by max_tokens lacks <|im_end|>: close it so the chat stays valid ChatML
            if ids[-1] != loop.turn_end_id:
                ids, mask = [*ids, loop.turn_end_id], [*mask, 0]
                logprobs = None if logprobs is None else [*logprobs, 0.0]
            merged, mask, logprobs = await loop.ct_merge_context_msg(
                self.messages, messages, ids, mask, logprobs
            )
            if len(mask) >= limit:  # no room left for another doctor turn: stop before this user turn
                raise _OutOfBudget("response_length")
            self.ids, self.mask, self.logprobs = merged.token_ids, mask, logprobs
        room = limit - len(self.mask)
        caps = [room, self.turn_cap, self.sampling_params.get("max_tokens") or room]
        params = {**self.sampling_params, "max_tokens": min(int(c) for c in caps)}
        if params.get("seed") is not None:  # a seeded rollout: each turn its own draw, fixed by (seed, turn)
            params["seed"] = mix_seed(params["seed"], len(self.spans))
        with simple_timer("generate_sequences", self.metrics):
            out = await loop.server_manager.generate(
                self.request_id, prompt_ids=self.ids, sampling_params=params
            )
        if not out.token_ids:
            raise RuntimeError(f"the rollout server returned no tokens (stop_reason={out.stop_reason!r})")
        self.metrics["num_preempted"] += out.num_preempted or 0
        # the v1 trainer's staleness tags read the weight versions the trajectory spans from extra_fields
        self.server_fields.setdefault("min_global_steps", out.extra_fields.get("min_global_steps"))
        self.server_fields["max_global_steps"] = out.extra_fields.get("max_global_steps")
        start = len(self.mask)
        merged, self.mask, logprobs = await loop.ct_merge_assistant_token(
            self.ids,
            list(out.token_ids),
            self.mask,
            self.logprobs,
            assistant_logprobs=None if self.logprobs is None else out.log_probs,
        )
        self.ids, self.logprobs = merged.token_ids, logprobs
        self.spans.append((start, len(self.mask)))
        text = answer_text(loop.tokenizer.decode(out.token_ids, skip_special_tokens=True))
        self.messages = [*messages, {"role": "assistant", "content": text}]
        return DoctorReply(text, list(out.token_ids), None if out.log_probs is None else list(out.log_probs))


@register_agent_loop(NAME)
class ConsultationAgentLoop(AgentLoopBase):
    """verl agent loop running one consultation (module docstring); constructed by verl's AgentLoopWorker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # verl's keyword `tools` lands in the base's **kwargs, unused
        self.response_length = int(self.rollout_config.response_length)
        self.max_assistant_turns = self.rollout_config.multi_turn.max_assistant_turns
        self.turn_end_id = self.tokenizer.convert_tokens_to_ids(TURN_END)
        if not isinstance(self.turn_end_id, int) or self.turn_end_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {TURN_END} token: the consultation loop needs a ChatML model"
            )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> ConsultationOutput:
        spec = EpisodeSpec.from_extra_info(kwargs.get("extra_info"))
        case, cfg = spec.case, spec.episode
        if spec.simulator not in _SIMULATORS:
            _SIMULATORS[spec.simulator] = PatientSimulator(spec.simulator)
        patient = _SIMULATORS[spec.simulator]
        request_id = (
            f"det-{kwargs.get('priority', 0)}-{kwargs.get('session_id', 0)}"
            if self.rollout_config.full_determinism
            else uuid4().hex
        )
        doctor = _TokenDoctor(self, sampling_params, request_id, spec.max_turn_tokens or self.response_length)
        rng = random.Random(f"{spec.seed}:{case.case_id}:{int(kwargs.get('global_steps', 0))}")
        t = start(case, patient, cfg) if spec.prior is None else spec.prior
        n_prior = len(t.steps())
        stopped = None
        try:
            for stage in spec.stages:
                if stage == "inquiry":
                    await run_inquiry(case, t, doctor, patient, cfg, rng, spec.interruption)
                else:
                    await run_stage(case, t, stage, doctor, cfg)
        except _OutOfBudget as e:
            stopped = e.reason
        if not doctor.spans:
            raise ValueError(
                f"case {case.case_id}: no doctor turn fit (stopped by {stopped}); raise "
                "rollout.response_length or rollout.multi_turn.max_assistant_turns"
            )

        # repeat detection embeds questions (MiniLM): off the event loop, like verl's own tokenizing
        violations, gammas, scores = await self.loop.run_in_executor(
            None, _verify, case, t, spec.step_verifier
        )
        steps = t.steps()[n_prior:]
        assert len(steps) == len(doctor.spans), "every doctor turn of this rollout is one run of mask 1"
        response_ids = doctor.ids[doctor.prompt_len :]
        assert len(response_ids) == len(doctor.mask) <= self.response_length
        record = t.to_dict()
        for turn in record["turns"]:  # the tokens are the output's own; keep the transcript small
            turn["token_ids"] = turn["logprobs"] = None
        extra_fields = {
            **doctor.server_fields,
            "case_id": case.case_id,
            "transcript": record,
            "step_spans": [list(s) for s in doctor.spans],
            "step_stages": [doc.stage for _, doc in steps],
            "step_violations": [[dataclasses.asdict(v) for v in vs] for vs in violations[n_prior:]],
            "step_gammas": gammas[n_prior:],
            "stage_scores": scores,
            "ended_by": t.ended_by,
            "stopped": stopped,
            "interrupted": t.interrupted,
        }
        return ConsultationOutput(
            prompt_ids=doctor.ids[: doctor.prompt_len],
            response_ids=response_ids,
            response_mask=doctor.mask,
            response_logprobs=doctor.logprobs,
            num_turns=2 * len(doctor.spans),  # each doctor turn answers one user turn (the first: the prompt)
            metrics=AgentLoopMetrics(**doctor.metrics),
            extra_fields=extra_fields,
        )


def _verify(case: ClinicalCase, t: Transcript, cfg: StepVerifierConfig) -> tuple[list, list[float], dict]:
    violations = verify_steps(t, cfg)
    return violations, step_gammas(violations, cfg), stage_scores(case, t)


class SingleTurnSparLoop(SingleTurnAgentLoop):
    """verl's single-turn loop, its reward written in SPAR's layout as one clean step.

    Stage 3 mixes consultations and single-turn prompts in one batch, and verl runs one advantage
    estimator per batch. With the reward at the first response token and gamma = 1 (the layout of
    `m3.rl.spar.encode_step_rewards` for a single clean step), `algorithm.adv_estimator=spar` gives these
    rows exactly GRPO's advantages, while consultations keep their step penalties.
    """

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> ConsultationOutput:
        out = await super().run(sampling_params, **kwargs)
        fields = out.model_dump(exclude_unset=True)
        fields["extra_fields"] = {**fields.get("extra_fields", {}), "step_gammas": [1.0]}
        return ConsultationOutput(**fields)


def build_agent_loop(
    server_manager: Any, tokenizer: Any, *, max_response_length: int, model_type: str, name: str = NAME
) -> AgentLoopBase:
    """The registered agent loop `name`, constructed exactly as verl's AgentLoopWorker does, on
    verl's default trainer config with `data.max_response_length`; `server_manager` answers
    `generate(request_id, prompt_ids=..., sampling_params=...)` (a vLLM server manager, our
    LocalServer, or the stage-2 vLLM teacher). verl keeps its registry private: this is the one
    place that reads it."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from m3.rl.verl_config import compose_verl_base

    register()
    vcfg = compose_verl_base("ppo_trainer", [f"data.max_response_length={max_response_length}"])
    return hydra.utils.instantiate(
        config=_agent_loop_registry[name],
        trainer_config=DictConfigWrap(config=vcfg),
        server_manager=server_manager,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type=model_type,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(vcfg.data),
        tools=ToolListWrap([]),
    )


def register() -> None:
    """(Re-)register "m3_consultation" and "m3_single_turn" in verl's agent-loop registry (idempotent)."""
    register_agent_loop(NAME)(ConsultationAgentLoop)  # same entry as the decorator's: safe to repeat
    register_agent_loop(SINGLE_TURN_NAME)(SingleTurnSparLoop)
