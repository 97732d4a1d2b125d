"""HealthBench data loading: the 30 real records, validation errors (file, line, field), URLs, subsampling."""

from __future__ import annotations

import functools
import http.server
import json
import random
import threading
from pathlib import Path

import pytest

from m3.config import REPO_ROOT
from m3.data.healthbench import (
    OFFICIAL_URLS,
    GradedExample,
    HealthBenchExample,
    graded_record,
    load_examples,
    load_graded,
    parse_graded,
    resolve_source,
    subsample,
)
from m3.judges.base import ItemVerdict, RubricItem

REPO = REPO_ROOT
SAMPLE = REPO / "data" / "healthbench_sample30.jsonl"
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "healthbench_sample30.jsonl"

GOOD = {
    "prompt_id": "p1",
    "prompt": [{"role": "user", "content": "I have a headache."}],
    "example_tags": ["theme:context_seeking"],
    "rubrics": [
        {"criterion": "Asks about onset.", "points": 5, "tags": ["level:example", "axis:completeness"]},
        {"criterion": "Recommends opioids.", "points": -8, "tags": ["level:example", "axis:accuracy"]},
        {"criterion": "Mentions red flags.", "points": 3, "tags": ["level:example", "axis:accuracy"]},
    ],
    "ideal_completions_data": None,
    "canary": "healthbench:test",
}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_official_urls_are_the_simple_evals_ones():
    base = "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/"
    assert OFFICIAL_URLS == {
        "main": base + "2025-05-07-06-14-12_oss_eval.jsonl",
        "hard": base + "hard_2025-05-08-21-00-10.jsonl",
        "consensus": base + "consensus_2025-05-09-20-00-46.jsonl",
    }
    assert resolve_source("hard") == OFFICIAL_URLS["hard"]
    assert resolve_source(SAMPLE) == str(SAMPLE)


def test_real_sample30():
    examples = load_examples(SAMPLE)
    assert len(examples) == 30
    assert len({e.prompt_id for e in examples}) == 30
    for e in examples:
        assert isinstance(e, HealthBenchExample)
        assert e.rubrics and all(isinstance(r, RubricItem) for r in e.rubrics)
        assert all(-10 <= r.points <= 10 and r.points != 0 for r in e.rubrics)
        assert any(r.points > 0 for r in e.rubrics)
        assert all(isinstance(r.tags, tuple) and r.tags for r in e.rubrics)
        assert all(t.split(":")[0] in {"level", "axis", "cluster"} for r in e.rubrics for t in r.tags)
        assert any(t.startswith("theme:") for t in e.example_tags)
        assert e.prompt[-1]["role"] == "user"
        assert e.canary and e.canary.startswith("healthbench:")
        if e.ideal_completions_data is not None:
            assert "ideal_completion" in e.ideal_completions_data
    first = examples[0]
    assert first.prompt_id == "1f548d5b-cd00-49a0-b327-283a2e00debd"
    assert first.example_tags == ["theme:context_seeking", "physician_agreed_category:enough-context"]
    assert first.rubrics[0].points == 10 and first.rubrics[0].tags == ("level:example", "axis:completeness")
    assert first.rubrics[3].points == -10


def test_repo_copy_matches_shared_sample():
    if not SHARED_SAMPLE.is_file():
        pytest.skip(f"{SHARED_SAMPLE} not present")
    assert load_examples(SHARED_SAMPLE) == load_examples(SAMPLE)


def test_round_trip_to_record():
    line = SAMPLE.read_text().splitlines()[0]
    example = load_examples(SAMPLE)[0]
    assert example.to_record() == json.loads(line)


def test_malformed_points_names_file_line_field(tmp_path):
    bad = json.loads(json.dumps(GOOD))
    bad["rubrics"][2]["points"] = "five"
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD] * 16 + [bad])
    with pytest.raises(ValueError) as err:
        load_examples(path)
    msg = str(err.value)
    assert "data.jsonl:17: field 'rubrics[2].points' must be a number, got 'five'" in msg
    assert "fix or remove that line" in msg


def mutated(edit) -> dict:
    record = json.loads(json.dumps(GOOD))
    edit(record)
    return record


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r.pop("prompt_id"), "field 'prompt_id' is missing"),
        (lambda r: r.update(prompt_id=7), "field 'prompt_id' must be a string, got 7"),
        (lambda r: r.update(prompt=[]), "field 'prompt' must be a non-empty list"),
        (lambda r: r["prompt"][0].pop("role"), "field 'prompt[0].role' is missing"),
        (lambda r: r["prompt"][0].update(content=None), "field 'prompt[0].content' must be a string"),
        (lambda r: r.update(example_tags="theme:x"), "field 'example_tags' must be a list of strings"),
        (lambda r: r.update(example_tags=["a", "a"]), "field 'example_tags' has duplicate tags ['a']"),
        (lambda r: r.pop("rubrics"), "field 'rubrics' is missing"),
        (lambda r: r.update(rubrics=[]), "field 'rubrics' must be a non-empty list"),
        (lambda r: r["rubrics"][1].pop("criterion"), "field 'rubrics[1].criterion' is missing"),
        (
            lambda r: r["rubrics"][0].update(points=True),
            "field 'rubrics[0].points' must be a number, got True",
        ),
        (lambda r: r["rubrics"][0].pop("points"), "field 'rubrics[0].points' is missing"),
        (
            lambda r: r["rubrics"][1].update(tags=["x", 3]),
            "field 'rubrics[1].tags[1]' must be a string, got 3",
        ),
        (lambda r: r["rubrics"][1].update(tags=["x", "x"]), "field 'rubrics[1].tags' has duplicate tags"),
        (
            lambda r: [i.update(points=-1) for i in r["rubrics"]],
            "field 'rubrics' has no item with positive points",
        ),
        (
            lambda r: r.update(ideal_completions_data="x"),
            "field 'ideal_completions_data' must be an object or null",
        ),
    ],
)
def test_malformed_fields(tmp_path, edit, expected):
    path = write_jsonl(tmp_path / "hb.jsonl", [GOOD, GOOD, mutated(edit)])
    with pytest.raises(ValueError, match="hb.jsonl:3: ") as err:
        load_examples(path)
    assert expected in str(err.value)


def test_bad_json_non_object_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "hb.jsonl", [GOOD, "{oops"])
    with pytest.raises(ValueError, match=r"hb.jsonl:2: the line is not valid JSON"):
        load_examples(path)
    path = write_jsonl(tmp_path / "hb.jsonl", ["[1, 2]"])
    with pytest.raises(ValueError, match=r"hb.jsonl:1: the line must be a JSON object, got list"):
        load_examples(path)
    path = write_jsonl(tmp_path / "hb.jsonl", [GOOD, "", "  ", GOOD])
    assert len(load_examples(path)) == 2
    with pytest.raises(ValueError, match="no such file.*main, hard, consensus"):
        load_examples(tmp_path / "missing.jsonl")


def test_load_from_http_url(tmp_path):
    write_jsonl(tmp_path / "hb.jsonl", [GOOD, GOOD])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hb.jsonl"
        examples = load_examples(url)
        assert [e.prompt_id for e in examples] == ["p1", "p1"]
        write_jsonl(tmp_path / "bad.jsonl", [GOOD, mutated(lambda r: r.pop("prompt_id"))])
        with pytest.raises(ValueError, match=r"/bad.jsonl:2: field 'prompt_id' is missing"):
            load_examples(url.replace("hb.jsonl", "bad.jsonl"))
        with pytest.raises(OSError, match="could not download"):
            load_examples(url.replace("hb.jsonl", "absent.jsonl"))
    finally:
        server.shutdown()
        server.server_close()


def test_subsample_matches_simple_evals_selection():
    items = list(range(50))
    picked = subsample(items, 10, seed=0)
    assert picked == random.Random(0).sample(items, 10)  # simple-evals: rng = random.Random(0); rng.sample
    assert picked == subsample(items, 10, seed=0)
    assert picked != subsample(items, 10, seed=1)
    assert len(set(picked)) == 10
    assert subsample(items, 50) == items and subsample(items, 99) == items and subsample(items, None) == items
    assert subsample(items, 0) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        subsample(items, -1)


def test_graded_record_round_trip(tmp_path):
    example = load_examples(write_jsonl(tmp_path / "hb.jsonl", [GOOD]))[0]
    verdicts = [ItemVerdict(True, "asked"), ItemVerdict(False, "no opioids"), ItemVerdict(True, "yes")]
    record = graded_record(example, "Answer.", verdicts)
    assert record["completion"] == "Answer."
    assert [r["criteria_met"] for r in record["rubrics"]] == [True, False, True]
    assert record["rubrics"][1]["explanation"] == "no opioids"
    g = parse_graded(record, "x:1")
    assert isinstance(g, GradedExample)
    assert g.example == example and g.criteria_met == [True, False, True]
    assert g.explanations == ["asked", "no opioids", "yes"]
    assert load_graded(write_jsonl(tmp_path / "g.jsonl", [record]))[0].completion == "Answer."
    with pytest.raises(ValueError, match="re-grade"):
        graded_record(
            example, "A", [ItemVerdict(True), ItemVerdict(None, error="timeout"), ItemVerdict(False)]
        )
    with pytest.raises(ValueError, match="one verdict per item"):
        graded_record(example, "A", [ItemVerdict(True)])
