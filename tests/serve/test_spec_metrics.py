"""vLLM's spec-decode counters: exact names (never the `_created` timestamps), acceptance length, the
engine-vs-reference comparison."""

from __future__ import annotations

import math

import pytest

from serve.spec_metrics import (
    acceptance_length,
    compare_acceptance,
    parse_spec_counters,
    per_position_acceptance,
)

# /metrics as vLLM 0.32's CPU build printed it (two engines here to check the sum over label sets)
PAGE = """\
# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m3"} 31.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m3"} 9.0
vllm:spec_decode_num_drafts_created{engine="0",model_name="m3"} 1.7964219788514729e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m3"} 93.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m3"} 27.0
vllm:spec_decode_num_draft_tokens_created{engine="0",model_name="m3"} 1.796421978851502e+09
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m3"} 20.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m3"} 4.0
vllm:spec_decode_num_accepted_tokens_created{engine="0",model_name="m3"} 1.7964219788515189e+09
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m3",position="0"} 14.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m3",position="1"} 6.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m3",position="2"} 0.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m3",position="0"} 4.0
vllm:spec_decode_num_accepted_tokens_per_pos_created{engine="0",model_name="m3",position="0"} 1.79642197885e+09
vllm:num_requests_running{engine="0",model_name="m3"} 0.0
"""


def test_counters_ignore_created_timestamps_and_sum_engines():
    c = parse_spec_counters(PAGE)
    assert (c.drafts, c.draft_tokens, c.accepted) == (40.0, 120.0, 24.0)
    assert c.accepted_per_pos == {0: 18.0, 1: 6.0, 2: 0.0}
    assert acceptance_length(c) == pytest.approx(1 + 24 / 40)  # 1.6 tokens per verification step
    assert per_position_acceptance(c) == pytest.approx([18 / 40, 6 / 40, 0.0])


def test_counters_are_diffed_between_scrapes():
    before = parse_spec_counters(PAGE)
    after = parse_spec_counters(PAGE.replace("} 31.0", "} 41.0").replace("} 20.0", "} 25.0"))
    d = after - before
    assert (d.drafts, d.accepted, d.draft_tokens) == (10.0, 5.0, 0.0)
    assert acceptance_length(d) == pytest.approx(1.5)
    assert math.isnan(acceptance_length(parse_spec_counters("")))


def test_compare_acceptance_within_ten_percent():
    assert compare_acceptance(1.62, 1.5)["within"]  # 8% off
    r = compare_acceptance(1.35, 1.5)
    assert r["rel_diff"] == pytest.approx(0.1) and r["within"] is (r["rel_diff"] <= 0.10)
    assert not compare_acceptance(1.3, 1.5)["within"]  # 13% off
    with pytest.raises(ValueError):
        compare_acceptance(math.nan, 1.5)
