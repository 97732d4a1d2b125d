"""m3: the shared library of the Baichuan-M3 reproduction (the things; stages hold the actions).

Top level, used by every entry point:
    config      structured configs (Hydra + dataclasses), hashing, secret redaction
    registry    the MLflow model registry hand-off between stages
    runs        the entry-point glue: command line, skip-if-registered, alias, summary row
    cli         the `m3` command (tiny checkpoints, base registration, registry listing, fact service)
Subsystems:
    model/      model handling: tiny Qwen3-MoE factory, the Qwen3 tokenizer rebuilt offline, the real
                preset's GGUF conversion, base registration, chat generation
    data/       prompt sources and rows of the three domains, the HealthBench record loader
    rl/         RL adapters shared by verl and the local engine: SPAR, rewards, the consultation agent
                loop, the verl plugin and config, the local engine and its generation server
    text/       text utilities: lexical rules, normalisation keys, reasoning tags, MiniLM embeddings
    clinic/     clinical cases, the patient simulator, the consultation episode, stage and step verifiers
    facts/      the Fact-Aware reward: claims, evidence corpus, retrieval, verifiers, claim cache
    judges/     rubric judges (offline and OpenAI-compatible) and the rubric verifier (eq. 1)
    llm/        the async OpenAI-compatible client with its cache
Stages (`stage1_expert_rl/`, ...) and the demo import from here, never the other way round.
The formula map (docs/formulas.md) points at the function of every equation.
"""

__version__ = "0.1.0"
