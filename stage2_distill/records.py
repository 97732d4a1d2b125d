"""Stage-2 teacher records on disk: parquet (the trainers' and verl's format) or JSON lines.

    write_records(records, Path("teacher.parquet"))   # -> sha256 digest (16 hex) of the records
    read_records(Path("teacher-healthcare.jsonl"))     # either format, by suffix

Light on purpose (json and hashlib; `datasets` only for parquet): vLLM's CPU venv (.venv-serve) runs
the teacher job (stage2_distill/vllm_teacher.py) without `datasets`, `verl` or the project's stack,
and writes JSON lines that the trainers then read as they are. The digest is over the records as
canonical JSON lines, so both formats of the same records hash alike.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SUFFIXES = (".parquet", ".jsonl")


def records_digest(records: list[dict]) -> str:
    """sha256 (16 hex) of the records as canonical JSON lines."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode() + b"\n")
    return h.hexdigest()[:16]


def check_format(path: Path) -> None:
    """Fail early (before an engine loads) when `path` cannot be written here."""
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: teacher records are .parquet or .jsonl, not {path.suffix!r}")
    if path.suffix == ".parquet":
        try:
            import datasets  # noqa: F401
        except ModuleNotFoundError as e:
            raise ValueError(
                f"{path} needs `datasets` ({e}), which vLLM's CPU venv (.venv-serve) does not have: "
                "write .jsonl there (the same records, lossless JSON; the trainers read both)"
            ) from e


def write_records(records: list[dict], path: Path) -> str:
    """Write `records` (format by suffix); returns their digest."""
    check_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(records).to_parquet(str(path))
    else:
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records_digest(records)


def read_records(path: Path) -> list[dict]:
    """Records from a .parquet or .jsonl file (a bad JSON line is reported with its line number)."""
    path = Path(path)
    if path.suffix == ".parquet":
        from datasets import Dataset

        return Dataset.from_parquet(str(path)).to_list()
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: teacher records are .parquet or .jsonl, not {path.suffix!r}")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON record ({e.msg}); re-run the teacher job") from e
    return out
