"""Stage-3 prompts: the three domains' rows (`m3.data.prompts.domain_rows`), student-sampled on policy.

Inquiry rows run the consultation agent loop; healthcare and general rows are single-turn. For a
verl job the single-turn rows use the "m3_single_turn" agent loop (m3.rl.agent_loop), which writes the
reward in SPAR's layout so one `algorithm.adv_estimator=spar` serves the mixed batch.

    python -c "from stage3_mopd.data import cluster_rows; print(len(cluster_rows(4)))"
"""

from __future__ import annotations

from m3.data.prompts import DATA_SOURCES, DOMAINS, domain_rows

DOMAIN_OF_SOURCE = {DATA_SOURCES[d]: d for d in DOMAINS}  # data_source -> teacher domain
MAX_INQUIRY_TURNS = 3  # short consultations: tiny students ramble


def cluster_rows(n_per_domain: int) -> list[dict]:
    """Rows of all three domains for a verl job: single-turn rows on the SPAR-layout loop."""
    from m3.rl.agent_loop import SINGLE_TURN_NAME  # imports verl: only where a verl job is prepared

    rows = []
    for d in DOMAINS:
        for r in domain_rows(d, n_per_domain, max_inquiry_turns=MAX_INQUIRY_TURNS):
            if r["agent_name"] != "m3_consultation":
                r["agent_name"] = SINGLE_TURN_NAME
            rows.append(r)
    return rows
