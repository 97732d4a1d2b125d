"""Stage-3 prompts: the three domains' rows (m3.expert_data schema), student-sampled on policy.

Inquiry rows run the consultation agent loop; healthcare and general rows are single-turn. For a
verl job the single-turn rows use the "m3_single_turn" agent loop (m3.agent_loop), which writes the
reward in SPAR's layout so one `algorithm.adv_estimator=spar` serves the mixed batch.

    python -c "from stage3_mopd.data import domain_rows; print(len(domain_rows('general', 4)))"
"""

from __future__ import annotations

from m3 import expert_data
from m3.config import REPO_ROOT

DOMAINS = ("inquiry", "healthcare", "general")
DOMAIN_OF_SOURCE = {expert_data.DATA_SOURCES[d]: d for d in DOMAINS}  # data_source -> teacher domain


def domain_rows(domain: str, n: int, offset: int = 0, max_inquiry_turns: int = 3) -> list[dict]:
    """Rows offset..offset+n of one domain's prompt source (the sources stage 1 trains on)."""
    if domain == "inquiry":
        from m3.clinic.cases import load_cases

        cases = load_cases(REPO_ROOT / "data" / "agentclinic_medqa.jsonl")[offset : offset + n]
        rows = expert_data.inquiry_rows(cases)
        for r in rows:  # short consultations: tiny students ramble
            r["extra_info"]["episode"] = {"max_inquiry_turns": max_inquiry_turns}
        return rows
    if domain == "healthcare":
        from eval.healthbench.data import load_examples

        examples = load_examples(REPO_ROOT / "data" / "healthbench_sample30.jsonl")[offset : offset + n]
        return expert_data.healthcare_rows(examples)
    if domain == "general":
        return expert_data.general_rows(expert_data.generate_general(offset + n, seed=0)[offset:])
    raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def cluster_rows(n_per_domain: int) -> list[dict]:
    """Rows of all three domains for a verl job: single-turn rows on the SPAR-layout loop."""
    from m3.agent_loop import SINGLE_TURN_NAME  # imports verl: only where a verl job is prepared

    rows = []
    for d in DOMAINS:
        for r in domain_rows(d, n_per_domain):
            if r["agent_name"] != "m3_consultation":
                r["agent_name"] = SINGLE_TURN_NAME
            rows.append(r)
    return rows
