"""HealthBench data: read the official JSONL (main / hard / consensus) and graded records.

    from m3.data.healthbench import load_examples, subsample
    examples = load_examples("hard")                        # an official subset, by name (needs network)
    examples = load_examples("data/healthbench_sample30.jsonl")   # a local copy
    examples = subsample(examples, 100, seed=0)             # the same 100 that simple-evals picks

A source is a local path, an http(s) URL, or one of the names in `OFFICIAL_URLS`. Every line is
validated; a malformed one raises ValueError naming the file, the line number and the field, e.g.
`data.jsonl:17: field 'rubrics[2].points' must be a number, got 'five'`.

A *graded* record (the input of `python -m eval.healthbench score`) is a HealthBench record plus
`completion` (the graded answer) and, on every rubric item, `criteria_met` (bool) and optionally
`explanation`. `graded_record` writes one from judge verdicts; `load_graded` reads them back.
"""

from __future__ import annotations

import json
import math
import random
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m3.judges.base import ItemVerdict, RubricItem

# The URLs simple-evals reads (healthbench_eval.py: INPUT_PATH, INPUT_PATH_HARD, INPUT_PATH_CONSENSUS).
OFFICIAL_URLS = {
    "main": "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/2025-05-07-06-14-12_oss_eval.jsonl",
    "hard": "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/hard_2025-05-08-21-00-10.jsonl",
    "consensus": "https://openaipublic.blob.core.windows.net/simple-evals/healthbench/consensus_2025-05-09-20-00-46.jsonl",
}

_FIX = "fix or remove that line (the schema is simple-evals' HealthBench JSONL)"


@dataclass
class HealthBenchExample:
    """One HealthBench conversation with its physician-written rubric."""

    prompt_id: str
    prompt: list[dict]  # [{"role": ..., "content": ...}, ...]; the model answers the last turn
    example_tags: list[str]  # e.g. "theme:emergency_referrals", "physician_agreed_category:..."
    rubrics: list[RubricItem]
    ideal_completions_data: dict | None = None
    canary: str | None = None
    extra: dict = field(default_factory=dict)  # any other top-level keys, kept for round trips

    def to_record(self) -> dict:
        """The official JSON object for this example (rubric tags as lists, as in the files)."""
        record = dict(self.extra)
        record.update(
            prompt_id=self.prompt_id,
            prompt=[dict(m) for m in self.prompt],
            example_tags=list(self.example_tags),
            rubrics=[
                {"criterion": r.criterion, "points": r.points, "tags": list(r.tags)} for r in self.rubrics
            ],
            ideal_completions_data=self.ideal_completions_data,
        )
        if self.canary is not None:
            record["canary"] = self.canary
        return record


@dataclass
class GradedExample:
    """An example, the completion that was graded, and the judge's verdict on every rubric item."""

    example: HealthBenchExample
    completion: str
    criteria_met: list[bool]  # one per rubric item, in order
    explanations: list[str] = field(default_factory=list)


def _bad(where: str, fld: str, what: str, got: object) -> ValueError:
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValueError(f"{where}: field '{fld}' {what}, got {shown}; {_FIX}")


def _str(obj: dict, key: str, where: str, fld: str | None = None) -> str:
    fld = fld or key
    if key not in obj:
        raise ValueError(f"{where}: field '{fld}' is missing; {_FIX}")
    value = obj[key]
    if not isinstance(value, str):
        raise _bad(where, fld, "must be a string", value)
    return value


def _tags(value: object, where: str, fld: str) -> list[str]:
    if not isinstance(value, list):
        raise _bad(where, fld, "must be a list of strings", value)
    for i, tag in enumerate(value):
        if not isinstance(tag, str):
            raise _bad(where, f"{fld}[{i}]", "must be a string", tag)
    # simple-evals asserts there are no duplicates (a tag's score would be counted twice).
    dupes = sorted({t for t in value if value.count(t) > 1})
    if dupes:
        raise ValueError(f"{where}: field '{fld}' has duplicate tags {dupes}; keep each tag once")
    return list(value)


def _rubric_item(obj: object, where: str, fld: str) -> RubricItem:
    if not isinstance(obj, dict):
        raise _bad(where, fld, "must be an object with criterion, points, tags", obj)
    criterion = _str(obj, "criterion", where, f"{fld}.criterion")
    if "points" not in obj:
        raise ValueError(f"{where}: field '{fld}.points' is missing; {_FIX}")
    points = obj["points"]
    # bool is an int subclass in Python; `true` as points is a data error, not 1 point.
    if isinstance(points, bool) or not isinstance(points, (int, float)) or not math.isfinite(points):
        raise _bad(where, f"{fld}.points", "must be a number", points)
    tags = _tags(obj.get("tags", []), where, f"{fld}.tags")
    return RubricItem(criterion=criterion, points=points, tags=tuple(tags))


def parse_example(obj: object, where: str) -> HealthBenchExample:
    """Validate one decoded JSON object and build the example; `where` is "file:line" for errors."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: the line must be a JSON object, got {type(obj).__name__}; {_FIX}")
    prompt_id = _str(obj, "prompt_id", where)
    if "prompt" not in obj:
        raise ValueError(f"{where}: field 'prompt' is missing; {_FIX}")
    prompt = obj["prompt"]
    if not isinstance(prompt, list) or not prompt:
        raise _bad(where, "prompt", "must be a non-empty list of {role, content} messages", prompt)
    for i, msg in enumerate(prompt):
        if not isinstance(msg, dict):
            raise _bad(where, f"prompt[{i}]", "must be an object with role and content", msg)
        _str(msg, "role", where, f"prompt[{i}].role")
        _str(msg, "content", where, f"prompt[{i}].content")
    example_tags = _tags(obj.get("example_tags", []), where, "example_tags")
    if "rubrics" not in obj:
        raise ValueError(f"{where}: field 'rubrics' is missing; {_FIX}")
    raw = obj["rubrics"]
    if not isinstance(raw, list) or not raw:
        raise _bad(where, "rubrics", "must be a non-empty list of rubric items", raw)
    rubrics = [_rubric_item(r, where, f"rubrics[{i}]") for i, r in enumerate(raw)]
    # The score divides by the sum of positive points; simple-evals asserts it is non-zero.
    if not any(r.points > 0 for r in rubrics):
        raise ValueError(
            f"{where}: field 'rubrics' has no item with positive points, so the example cannot be scored "
            "(score = achieved / sum of positive points); add a positive item or drop the line"
        )
    icd = obj.get("ideal_completions_data")
    if icd is not None and not isinstance(icd, dict):
        raise _bad(where, "ideal_completions_data", "must be an object or null", icd)
    canary = obj.get("canary")
    if canary is not None and not isinstance(canary, str):
        raise _bad(where, "canary", "must be a string", canary)
    known = {"prompt_id", "prompt", "example_tags", "rubrics", "ideal_completions_data", "canary"}
    return HealthBenchExample(
        prompt_id=prompt_id,
        prompt=[dict(m) for m in prompt],
        example_tags=example_tags,
        rubrics=rubrics,
        ideal_completions_data=icd,
        canary=canary,
        extra={k: v for k, v in obj.items() if k not in known},
    )


def resolve_source(source: str | Path) -> str:
    """Map an official subset name to its URL; return paths and URLs unchanged (as str)."""
    text = str(source)
    return OFFICIAL_URLS.get(text, text)


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def iter_lines(source: str | Path, timeout_s: float = 60.0) -> Iterator[tuple[str, int, str]]:
    """Yield (where, line_number, text) for every non-blank line of a local file or an http(s) URL."""
    src = resolve_source(source)
    name = src if _is_url(src) else str(source)
    if _is_url(src):
        try:
            with urllib.request.urlopen(src, timeout=timeout_s) as resp:
                data = resp.read().decode("utf-8")
        except urllib.error.URLError as e:
            raise OSError(
                f"could not download {src}: {e}; check the network, or download the file and pass its path"
            ) from e
        lines = data.splitlines()
    else:
        path = Path(src)
        if not path.is_file():
            names = ", ".join(OFFICIAL_URLS)
            raise ValueError(
                f"{src}: no such file; pass a HealthBench JSONL path, an http(s) URL, or one of: {names}"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, start=1):
        if line.strip():  # a trailing blank line is not a record
            yield f"{name}:{n}", n, line


def _decode(where: str, line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: the line is not valid JSON ({e.msg} at column {e.colno}); {_FIX}") from e


def load_examples(source: str | Path) -> list[HealthBenchExample]:
    """Read and validate every record of `source` (path, URL, or "main" / "hard" / "consensus")."""
    return [parse_example(_decode(where, line), where) for where, _, line in iter_lines(source)]


def subsample(examples: Sequence, n: int | None, seed: int = 0) -> list:
    """`n` examples drawn without replacement by `random.Random(seed).sample`, or all if n >= len.

    With seed=0 this is the subset simple-evals evaluates for `--examples n` (same file order).
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise ValueError(f"subsample: n must be >= 0, got {n}; pass None to keep every example")
    return random.Random(seed).sample(list(examples), n)


def parse_graded(obj: object, where: str) -> GradedExample:
    """Validate one graded record: a HealthBench record + `completion` + per-item `criteria_met`."""
    example = parse_example(obj, where)  # also checks that obj is a dict whose rubrics are dicts
    record: dict = obj  # type: ignore[assignment]
    completion = _str(record, "completion", where)
    met, explanations = [], []
    for i, item in enumerate(record["rubrics"]):
        fld = f"rubrics[{i}].criteria_met"
        if "criteria_met" not in item:
            raise ValueError(f"{where}: field '{fld}' is missing; grade every rubric item (true or false)")
        value = item["criteria_met"]
        if not isinstance(value, bool):
            # simple-evals re-asks the grader until it answers true or false; never score a failed item.
            raise _bad(where, fld, "must be true or false (re-grade items whose judge failed)", value)
        explanation = item.get("explanation", "")
        if not isinstance(explanation, str):
            raise _bad(where, f"rubrics[{i}].explanation", "must be a string", explanation)
        met.append(value)
        explanations.append(explanation)
    example.extra.pop("completion", None)  # it lives on the GradedExample, not the example
    return GradedExample(example, completion, met, explanations)


def load_graded(source: str | Path) -> list[GradedExample]:
    """Read and validate every graded record of a local JSONL file or URL."""
    return [parse_graded(_decode(where, line), where) for where, _, line in iter_lines(source)]


def graded_record(example: HealthBenchExample, completion: str, verdicts: Sequence[ItemVerdict]) -> dict:
    """The graded JSON object for one example: what `load_graded` reads and the CLI scores."""
    if len(verdicts) != len(example.rubrics):
        raise ValueError(
            f"{example.prompt_id}: {len(verdicts)} verdicts for {len(example.rubrics)} rubric items; "
            "pass one verdict per item, in order"
        )
    record = example.to_record()
    for item, verdict in zip(record["rubrics"], verdicts, strict=True):
        if verdict.criteria_met is None:
            raise ValueError(
                f"{example.prompt_id}: item '{item['criterion'][:60]}' has no verdict ({verdict.error}); "
                "re-grade it before scoring"
            )
        item["criteria_met"] = verdict.criteria_met
        item["explanation"] = verdict.explanation
    record["completion"] = completion
    return record
