"""The passive standardized patient of the consultation environment (the M2 simulator design).

    from m3.clinic.patient.simulator import PatientSimulator
    from m3.clinic.patient.config import SimulatorConfig

Modules, each importing only those above it (no import circle):
    config      SimulatorConfig: backend and retrieval knobs
    questions   the question rules: history topics, exam / test / "anything else" / age requests
    persona     who speaks (patient or parent), canned replies, the first-person rewrite, the opening,
                the interruption snippets
    retrieval   which case facts answer a question (MiniLM + lexical), said in the persona's voice
    guards      the factual check of a reply and the termination gate
    llm         the LLM backend: prompt, validation, re-ask on a failed check
    simulator   PatientSimulator, tying them together (both backends)
"""
