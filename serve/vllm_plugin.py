"""vLLM general plugin: registers our gated Eagle3 draft class with vLLM's model registry.

Entry point (pyproject.toml): `[project.entry-points."vllm.general_plugins"] m3_gated_eagle3 =
"serve.vllm_plugin:register"`. vLLM calls it in every process it starts (API server, engine core,
workers, its registry's inspection subprocess) once `pip install --no-deps -e .` has put this repo
into vLLM's environment (make setup-serve). Kept free of heavy imports: the class is registered by
its "module:Class" string and imported by vLLM only when a draft names it. `VLLM_PLUGINS=` (empty)
turns every general plugin off; `VLLM_PLUGINS=m3_gated_eagle3` loads only this one.
"""

from __future__ import annotations

# The raw config.json name (looked up when vLLM builds the draft's ModelConfig) and the name after
# vLLM's EAGLEConfig rewrite (f"Eagle3{arch}" unless it starts or ends with "Eagle3"), used to load it.
ARCHITECTURES = ("LlamaForCausalLMEagle3Gated", "Eagle3LlamaForCausalLMEagle3Gated")
MODEL_CLASS = "serve.vllm_gated_eagle3:GatedEagle3LlamaForCausalLM"


def register() -> None:
    """Idempotent (vLLM may call it more than once per process)."""
    from vllm import ModelRegistry

    for arch in ARCHITECTURES:
        ModelRegistry.register_model(arch, MODEL_CLASS)
