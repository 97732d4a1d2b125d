"""HealthBench scoring: per-example rubric scores and their aggregate, exactly as simple-evals.

    from eval.healthbench.scoring import score_graded
    metrics = score_graded(load_graded("graded.jsonl"))   # {"overall_score": 0.41, ...}

Pure functions, no I/O. The semantics follow openai/simple-evals `healthbench_eval.py`:

* `calculate_score`: achieved points (every item whose criterion is met, negative items included)
  over the sum of positive points; not clipped per example; None when no item has positive points.
* `example_metrics`: "overall_score", every example tag with that same score, and every rubric tag
  re-scored over only the items carrying it (skipped when it has no positive item).
* `aggregate`: for every metric key the mean clipped to [0, 1], `<key>:n_samples` and
  `<key>:bootstrap_std`; plus the "score" key family (a copy of overall_score), as in the metrics
  JSON that simple-evals writes (keys sorted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3.data.healthbench import GradedExample
from m3.judges.base import RubricItem

N_BOOTSTRAP = 1000


def calculate_score(points: Sequence[float], criteria_met: Sequence[bool]) -> float | None:
    """Rubric score of one response.

        score = sum_{i : met_i} p_i  /  sum_{i : p_i > 0} p_i

    Negative items that are met subtract; the result may be < 0 and is not clipped here.
    Returns None when the denominator is 0 (no positive item).
    """
    if len(points) != len(criteria_met):
        raise ValueError(
            f"calculate_score: {len(points)} items but {len(criteria_met)} verdicts; pass one per item"
        )
    total_possible = sum(p for p in points if p > 0)
    if total_possible == 0:
        return None
    achieved = sum(p for p, met in zip(points, criteria_met, strict=True) if met)
    return achieved / total_possible


def example_metrics(
    rubrics: Sequence[RubricItem], criteria_met: Sequence[bool], example_tags: Sequence[str]
) -> dict[str, float]:
    """All metric values of one graded example.

        overall_score           = calculate_score(all items)
        <example tag>           = overall_score                      (e.g. "theme:hedging")
        <rubric tag t>          = calculate_score(items tagged t)    (e.g. "axis:accuracy")

    A rubric tag whose items are all non-positive has no score and is left out. Rubric tags are
    written after example tags, so a name used by both takes the rubric value (as simple-evals).
    """
    overall = calculate_score([r.points for r in rubrics], criteria_met)
    if overall is None:
        raise ValueError("example_metrics: no rubric item has positive points; the example cannot be scored")
    metrics = {"overall_score": overall}
    metrics.update({tag: overall for tag in example_tags})
    by_tag: dict[str, tuple[list[float], list[bool]]] = {}
    for item, met in zip(rubrics, criteria_met, strict=True):
        for tag in item.tags:
            pts, mets = by_tag.setdefault(tag, ([], []))
            pts.append(item.points)
            mets.append(met)
    for tag, (pts, mets) in by_tag.items():
        score = calculate_score(pts, mets)
        if score is not None:
            metrics[tag] = score
    return metrics


def clipped_mean(values: Sequence[float]) -> float:
    """clip(mean(values), 0, 1): the reported HealthBench number (per-example scores are unclipped)."""
    if len(values) == 0:
        raise ValueError("clipped_mean: no values; score at least one example")
    return float(np.clip(np.mean(values), 0.0, 1.0))


def bootstrap_std(values: Sequence[float], n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> float:
    """Population std (ddof=0) of the clipped means of `n_resamples` bootstrap resamples.

        std_b( clip(mean(values[idx_b]), 0, 1) ),  idx_b ~ Uniform{0..n-1}^n with replacement

    Each resample's mean is clipped before the std, as simple-evals does. A fresh generator seeded
    with `seed` per call makes every key's std reproducible and independent of the other keys.
    """
    if n_resamples < 1:
        raise ValueError(f"bootstrap_std: n_resamples must be >= 1, got {n_resamples}")
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("bootstrap_std: no values; score at least one example")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_resamples, arr.size))
    means = np.clip(arr[idx].mean(axis=1), 0.0, 1.0)
    return float(np.std(means))


def aggregate(
    per_example: Sequence[dict[str, float]], n_resamples: int = N_BOOTSTRAP, seed: int = 0
) -> dict[str, float | int]:
    """The metrics dict of simple-evals from per-example metric dicts (see `example_metrics`).

    For every key k present in at least one example (n_samples counts those examples only):
        k = clipped_mean,  k:n_samples = count,  k:bootstrap_std = bootstrap_std
    "score" repeats "overall_score" (simple-evals aggregates SingleEvalResult.score under that name
    and merges it back into the metrics JSON). Keys are sorted, as in the file simple-evals writes.
    """
    if not per_example:
        raise ValueError("aggregate: no graded examples; grade at least one example")
    values: dict[str, list[float]] = {}
    for metrics in per_example:
        if "overall_score" not in metrics:
            raise ValueError(
                "aggregate: a per-example dict lacks 'overall_score'; build it with example_metrics"
            )
        for name, value in metrics.items():
            values.setdefault(name, []).append(value)
        values.setdefault("score", []).append(metrics["overall_score"])
    out: dict[str, float | int] = {}
    for name, vals in values.items():
        out[name] = clipped_mean(vals)
        out[f"{name}:n_samples"] = len(vals)
        out[f"{name}:bootstrap_std"] = bootstrap_std(vals, n_resamples, seed)
    return dict(sorted(out.items()))


def score_graded(
    graded: Sequence[GradedExample], n_resamples: int = N_BOOTSTRAP, seed: int = 0
) -> dict[str, float | int]:
    """Metrics of a list of graded examples (example + per-item criteria_met), as simple-evals."""
    per_example = []
    for g in graded:
        try:
            per_example.append(example_metrics(g.example.rubrics, g.criteria_met, g.example.example_tags))
        except ValueError as e:
            raise ValueError(f"prompt_id {g.example.prompt_id}: {e}") from e
    return aggregate(per_example, n_resamples, seed)
