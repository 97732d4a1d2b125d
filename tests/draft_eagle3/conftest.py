"""Fixtures of the draft tests: one torch thread (2 threads on a shared 2-core machine are ~40x
slower for these small matmuls), a tiny draft shape, and a tiny target whose greedy output walks."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def walk_target(tiny_dir):
    """The tiny target with its output head untied and redrawn (seed 0): greedy decoding then walks
    through varied tokens instead of repeating one (the tied tiny model mostly predicts its input
    token), so cache and acceptance bugs show up in the output."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32, tie_word_embeddings=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=gen) * 0.02)
    return model.eval()


PROMPTS = [
    [151644, 872, 198, 40, 614, 264, 33553, 13, 151645, 198, 151644, 77091, 198],
    [151644, 872, 198, 3838, 374, 91443, 30, 151645, 198, 151644, 77091, 198],
    [151644, 872, 198, 840, 20772, 1010, 35199, 311, 264, 8720, 13, 151645, 198, 151644, 77091, 198],
]
