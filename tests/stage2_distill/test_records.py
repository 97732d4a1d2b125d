"""Teacher records on disk: parquet and JSON lines hold the same records and hash alike."""

import sys

import pytest

from stage2_distill.records import check_format, read_records, records_digest, write_records
from stage2_distill.vllm_teacher import make_record

RECORDS = [
    make_record("general", {"extra_info": {"prompt_id": "g1"}}, [1, 2], [3, 4], [1, 1], [-0.5, -1e-7]),
    make_record(
        "healthcare", {"extra_info": {"prompt_id": "h1"}}, [5], [6, 7, 8], [1, 0, 1], [-1.0, -2.0, -3.0]
    ),
]


def test_both_formats_round_trip_with_one_digest(tmp_path):
    digest = write_records(RECORDS, tmp_path / "t.jsonl")
    assert digest == write_records(RECORDS, tmp_path / "t.parquet") == records_digest(RECORDS)
    assert read_records(tmp_path / "t.jsonl") == RECORDS == read_records(tmp_path / "t.parquet")
    assert records_digest(RECORDS[::-1]) != digest  # order is part of the data


def test_bad_input_is_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="are .parquet or .jsonl, not '.csv'"):
        write_records(RECORDS, tmp_path / "t.csv")
    (tmp_path / "bad.jsonl").write_text('{"domain": "general"}\n{"domain": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON record"):
        read_records(tmp_path / "bad.jsonl")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as in .venv-serve: no datasets
    check_format(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match="write .jsonl there"):
        check_format(tmp_path / "t.parquet")
