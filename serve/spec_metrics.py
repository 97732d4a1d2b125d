"""Speculative-decoding counters from vLLM's Prometheus `/metrics`, and the acceptance-length check
against our reference decoder (draft_eagle3/speculative.py).

    from serve.spec_metrics import scrape, acceptance_length, compare_acceptance
    before = scrape("http://127.0.0.1:8000")            # counters are cumulative: diff two scrapes
    ...requests...
    al = acceptance_length(scrape("http://127.0.0.1:8000") - before)
    compare_acceptance(al, reference["acceptance_length"], rel_tol=0.10)

vLLM 0.32 (v1/spec_decode/metrics.py) counts, per request and verification step, one draft, its k
draft tokens and the accepted ones:
    vllm:spec_decode_num_drafts_total, vllm:spec_decode_num_draft_tokens_total,
    vllm:spec_decode_num_accepted_tokens_total, vllm:spec_decode_num_accepted_tokens_per_pos_total{position=i}
Mean acceptance length = 1 + accepted / drafts (the bonus or correction token counts, as in vLLM's own
log line), the same quantity as our reference's mean of (a + 1) over verification steps.
Every counter also has a `<name>_created` line holding a Unix timestamp: lines are matched by exact
sample name, never by prefix, and summed over label sets (engines) only for that exact name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

DRAFTS = "vllm:spec_decode_num_drafts_total"
DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"

# one sample line: name, optional {labels}, value (timestamps are not emitted by prometheus_client)
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_POSITION = re.compile(r'position="(\d+)"')


@dataclass
class SpecCounters:
    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    accepted_per_pos: dict[int, float] = field(default_factory=dict)

    def __sub__(self, other: SpecCounters) -> SpecCounters:
        pos = {i: v - other.accepted_per_pos.get(i, 0.0) for i, v in self.accepted_per_pos.items()}
        return SpecCounters(
            self.drafts - other.drafts,
            self.draft_tokens - other.draft_tokens,
            self.accepted - other.accepted,
            pos,
        )


def parse_spec_counters(metrics_text: str) -> SpecCounters:
    """The spec-decode counters of one /metrics page (exact sample names; `_created` lines ignored)."""
    c = SpecCounters()
    for line in metrics_text.splitlines():
        m = _LINE.match(line)
        if m is None or line.startswith("#"):
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == DRAFTS:
            c.drafts += value
        elif name == DRAFT_TOKENS:
            c.draft_tokens += value
        elif name == ACCEPTED:
            c.accepted += value
        elif name == PER_POS:
            pos = _POSITION.search(labels)
            assert pos is not None, f"per-position counter without a position label: {line}"
            i = int(pos.group(1))
            c.accepted_per_pos[i] = c.accepted_per_pos.get(i, 0.0) + value
    return c


def scrape(root_url: str, timeout_s: float = 30.0) -> SpecCounters:
    """GET <root_url>/metrics (the server root, not /v1) and parse the spec-decode counters."""
    import httpx

    r = httpx.get(f"{root_url.rstrip('/')}/metrics", timeout=timeout_s)
    r.raise_for_status()
    return parse_spec_counters(r.text)


def acceptance_length(c: SpecCounters) -> float:
    """1 + accepted / drafts: committed tokens per verification step (NaN when nothing was drafted)."""
    return 1.0 + c.accepted / c.drafts if c.drafts > 0 else math.nan


def per_position_acceptance(c: SpecCounters) -> list[float]:
    """P(a >= i + 1) per draft position i, as the reference's per_position_acceptance."""
    return [c.accepted_per_pos[i] / c.drafts for i in sorted(c.accepted_per_pos)] if c.drafts else []


def compare_acceptance(engine: float, reference: float, rel_tol: float = 0.10) -> dict:
    """Whether the engine's acceptance length matches the reference decoder's within `rel_tol`
    (relative to the reference): {"engine", "reference", "rel_diff", "within"}."""
    if not (reference > 0 and math.isfinite(reference) and math.isfinite(engine)):
        raise ValueError(
            f"acceptance lengths must be finite and positive: engine {engine}, reference {reference}"
        )
    rel = abs(engine - reference) / reference
    return {"engine": engine, "reference": reference, "rel_diff": rel, "within": rel <= rel_tol}
