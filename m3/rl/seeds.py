"""Per-request sampling seeds (vLLM's `SamplingParams.seed`), derived from a run's coordinates.

    from m3.rl.seeds import mix_seed
    params["seed"] = mix_seed(run_seed, step, prompt_index, sample_index)

A sampled request that carries a seed draws from its own generator, so what it samples does not
depend on what else the engine batches with it or in which order requests arrive: two runs with
the same seed draw the same samples from the same weights (the arms of an ablation pair up).
Kept free of verl and model imports: the agent loop (loaded by verl's plugin hook) and the local
server both use it.
"""

from __future__ import annotations

import numpy as np


def mix_seed(*parts: int) -> int:
    """One request seed from several integers (run seed, step, prompt, sample, turn): a well-mixed
    31-bit value (numpy's SeedSequence hash), equal for equal parts on every machine."""
    return int(np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1)[0] % (2**31 - 1))
