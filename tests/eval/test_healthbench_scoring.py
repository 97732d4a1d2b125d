"""HealthBench scoring against hand-computed numbers, and the `score` CLI end to end.

Three graded examples are used throughout (points, criteria_met, rubric tags):

    A  +5 met [acc, lvl]  +5 not [compl, lvl]  -10 met [acc, lvl]  -3 met [comm, lvl]   theme:hedging
       overall = (5 - 10 - 3) / 10 = -0.8   acc = (5 - 10) / 5 = -1   compl = 0 / 5 = 0
       comm: only a negative item -> skipped   level:example = -0.8
    B  +6 met [acc]  +4 met [compl]  -2 not [comm]                                     theme:emergency_referrals
       overall = 10 / 10 = 1   acc = 1   compl = 1   comm skipped
    C  +4 met [acc, cluster:x]  +4 not [comm]  -4 not [acc]                            theme:hedging
       overall = 4 / 8 = 0.5   acc = 4 / 4 = 1   comm = 0 / 4 = 0   cluster:x = 1
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.healthbench.__main__ import main
from eval.healthbench.scoring import (
    aggregate,
    bootstrap_std,
    calculate_score,
    clipped_mean,
    example_metrics,
    score_graded,
)
from m3.data.healthbench import GradedExample, HealthBenchExample
from m3.judges.base import RubricItem

REPO = Path(__file__).parents[2]
ACC, COMPL, COMM, LVL = "axis:accuracy", "axis:completeness", "axis:communication_quality", "level:example"

# (points, met, tags) per item, example tags
SPECS = {
    "A": (
        [(5, True, (ACC, LVL)), (5, False, (COMPL, LVL)), (-10, True, (ACC, LVL)), (-3, True, (COMM, LVL))],
        ["theme:hedging"],
    ),
    "B": ([(6, True, (ACC,)), (4, True, (COMPL,)), (-2, False, (COMM,))], ["theme:emergency_referrals"]),
    "C": ([(4, True, (ACC, "cluster:x")), (4, False, (COMM,)), (-4, False, (ACC,))], ["theme:hedging"]),
}


def graded(name: str) -> GradedExample:
    items, tags = SPECS[name]
    rubrics = [RubricItem(f"{name} item {i}", p, t) for i, (p, _, t) in enumerate(items)]
    example = HealthBenchExample(name, [{"role": "user", "content": "q"}], tags, rubrics)
    return GradedExample(example, "answer", [m for _, m, _ in items])


def graded_line(name: str) -> str:
    items, tags = SPECS[name]
    return json.dumps(
        {
            "prompt_id": name,
            "prompt": [{"role": "user", "content": "q"}],
            "example_tags": tags,
            "rubrics": [
                {
                    "criterion": f"{name} item {i}",
                    "points": p,
                    "tags": list(t),
                    "criteria_met": m,
                    "explanation": "e",
                }
                for i, (p, m, t) in enumerate(items)
            ],
            "ideal_completions_data": None,
            "completion": "answer",
        }
    )


def test_calculate_score_matches_simple_evals_unit_test():
    # simple-evals healthbench_eval_test.py: (7 + 10 - 6) / (7 + 5 + 10)
    assert calculate_score([7, 5, 10, -6], [True, False, True, True]) == pytest.approx(11 / 22)


def test_calculate_score_negative_unclipped_and_none_without_positive_points():
    assert calculate_score([5, 5, -10, -3], [True, False, True, True]) == pytest.approx(-0.8)
    assert calculate_score([-3, -2], [True, False]) is None
    assert calculate_score([], []) is None
    with pytest.raises(ValueError, match="one per item"):
        calculate_score([1, 2], [True])


def test_example_metrics_negative_example_and_skipped_negative_only_tag():
    g = graded("A")
    m = example_metrics(g.example.rubrics, g.criteria_met, g.example.example_tags)
    assert m == pytest.approx(
        {"overall_score": -0.8, "theme:hedging": -0.8, ACC: -1.0, COMPL: 0.0, LVL: -0.8}
    )
    assert COMM not in m  # only a -3 item carries it: no positive points, so no score


def test_example_tags_inherit_overall_score():
    g = graded("C")
    m = example_metrics(g.example.rubrics, g.criteria_met, ["theme:hedging", "physician_agreed_category:x"])
    assert m["theme:hedging"] == m["physician_agreed_category:x"] == m["overall_score"] == 0.5
    assert m[ACC] == 1.0 and m[COMM] == 0.0 and m["cluster:x"] == 1.0


def test_example_without_positive_points_is_an_error():
    with pytest.raises(ValueError, match="positive points"):
        example_metrics([RubricItem("bad", -5)], [True], [])


def test_aggregate_clips_the_mean_not_the_examples():
    metrics = score_graded([graded("A"), graded("B"), graded("C")], n_resamples=200, seed=0)
    expected_means = {
        "overall_score": (-0.8 + 1.0 + 0.5) / 3,  # 0.2333: the -0.8 counts unclipped
        "score": (-0.8 + 1.0 + 0.5) / 3,
        ACC: (-1.0 + 1.0 + 1.0) / 3,
        COMPL: (0.0 + 1.0) / 2,
        COMM: 0.0,  # from C only
        LVL: 0.0,  # A only: -0.8 clipped to 0 in the mean
        "theme:hedging": 0.0,  # mean(-0.8, 0.5) = -0.15 -> 0
        "theme:emergency_referrals": 1.0,
        "cluster:x": 1.0,
    }
    expected_n = {
        "overall_score": 3,
        "score": 3,
        ACC: 3,
        COMPL: 2,
        COMM: 1,
        LVL: 1,
        "theme:hedging": 2,
        "theme:emergency_referrals": 1,
        "cluster:x": 1,
    }
    keys = [k for name in expected_means for k in (name, f"{name}:n_samples", f"{name}:bootstrap_std")]
    assert list(metrics) == sorted(keys)  # exactly these keys, sorted like simple-evals' JSON
    for name, mean in expected_means.items():
        assert metrics[name] == pytest.approx(mean), name
        assert metrics[f"{name}:n_samples"] == expected_n[name], name
    for name in (COMM, LVL, "theme:emergency_referrals", "cluster:x"):  # one sample: no spread
        assert metrics[f"{name}:bootstrap_std"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["score:bootstrap_std"] == metrics["overall_score:bootstrap_std"]


def test_bootstrap_clips_each_resample_mean():
    # values (-0.8, 0.5): resample means -0.8, -0.15, 0.5 with prob 1/4, 1/2, 1/4, clipped to 0, 0, 0.5.
    # std = 0.5 * sqrt(0.25 * 0.75) = 0.2165 (unclipped it would be 0.65 * sqrt(0.5) = 0.4596).
    assert bootstrap_std([-0.8, 0.5], 4000, seed=0) == pytest.approx(0.2165, abs=0.01)


def test_bootstrap_std_deterministic_and_magnitude():
    values = [0.0, 1.0] * 200  # std of the mean of 400 Bernoulli(0.5) = sqrt(0.25 / 400) = 0.025
    a = bootstrap_std(values, seed=0)
    assert a == bootstrap_std(values, seed=0)
    assert a != bootstrap_std(values, seed=1)
    assert a == pytest.approx(0.025, rel=0.1)
    assert bootstrap_std([0.3], seed=0) == pytest.approx(0.0, abs=1e-12)  # float noise of np.std only
    with pytest.raises(ValueError):
        bootstrap_std([], seed=0)


def test_clipped_mean_and_aggregate_input_errors():
    assert clipped_mean([1.5, 1.0]) == 1.0
    assert clipped_mean([-0.2, 0.1]) == 0.0
    assert clipped_mean([0.25, 0.75]) == 0.5
    with pytest.raises(ValueError, match="no graded examples"):
        aggregate([])
    with pytest.raises(ValueError, match="overall_score"):
        aggregate([{"axis:accuracy": 1.0}])


def test_score_cli_end_to_end(tmp_path, capsys):
    path = tmp_path / "graded.jsonl"
    path.write_text("\n".join(graded_line(n) for n in "ABC") + "\n")
    out = tmp_path / "out" / "metrics.json"
    assert main(["score", "--graded", str(path), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["overall_score"] == pytest.approx(0.7 / 3)
    assert metrics["score"] == pytest.approx(0.7 / 3)
    assert metrics["overall_score:n_samples"] == 3
    assert metrics[ACC] == pytest.approx(1 / 3)
    assert metrics[COMPL] == pytest.approx(0.5) and metrics[f"{COMPL}:n_samples"] == 2
    assert metrics["theme:hedging"] == 0.0 and metrics["theme:hedging:n_samples"] == 2
    assert metrics[LVL] == 0.0 and metrics["cluster:x"] == 1.0
    # bootstrap over (-0.8, 1.0, 0.5): a positive spread, well under the range of the values
    assert 0.05 < metrics["overall_score:bootstrap_std"] < 0.5
    table = capsys.readouterr().out
    assert "overall_score" in table and "0.2333" in table and ACC in table
    # same seed, same file -> identical metrics
    out2 = tmp_path / "metrics2.json"
    assert main(["score", "--graded", str(path), "--out", str(out2)]) == 0
    assert json.loads(out2.read_text()) == metrics


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eval.healthbench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r["rubrics"][1].update(criteria_met="yes"), "rubrics[1].criteria_met"),
        (lambda r: r["rubrics"][2].pop("criteria_met"), "rubrics[2].criteria_met"),
        (lambda r: r["rubrics"][0].update(criteria_met=None), "rubrics[0].criteria_met"),
        (lambda r: r.pop("completion"), "completion"),
        (lambda r: r["rubrics"][0].update(points="five"), "rubrics[0].points"),
    ],
)
def test_score_cli_malformed_line_exits_2_with_file_line_field(tmp_path, edit, field):
    bad = json.loads(graded_line("B"))
    edit(bad)
    path = tmp_path / "graded.jsonl"
    path.write_text(graded_line("A") + "\n" + json.dumps(bad) + "\n" + graded_line("C") + "\n")
    res = run_cli("score", "--graded", str(path), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2
    assert f"graded.jsonl:2: field '{field}'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "m.json").exists()


def test_score_cli_missing_file_and_bad_json(tmp_path):
    res = run_cli("score", "--graded", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr
    path = tmp_path / "graded.jsonl"
    path.write_text(graded_line("A") + "\n{not json\n")
    res = run_cli("score", "--graded", str(path), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2 and "graded.jsonl:2: the line is not valid JSON" in res.stderr


def test_score_on_real_records_with_all_met_positive_items():
    # Meet exactly the positive items of the 30 real records: every score is 1, every key is 1.
    from m3.data.healthbench import load_examples

    examples = load_examples(REPO / "data" / "healthbench_sample30.jsonl")
    gs = [GradedExample(e, "x", [r.points > 0 for r in e.rubrics]) for e in examples]
    metrics = score_graded(gs, n_resamples=50)
    assert metrics["overall_score"] == 1.0 and metrics["overall_score:n_samples"] == 30
    means = {k: v for k, v in metrics.items() if not k.endswith((":n_samples", ":bootstrap_std"))}
    assert len(means) > 10 and all(v == 1.0 for v in means.values())
    assert np.isclose(metrics["overall_score:bootstrap_std"], 0.0)
    assert metrics["axis:accuracy:n_samples"] <= 30
