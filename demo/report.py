"""The pipeline report: one markdown with the lineage of the registered versions, every step's key
metric (with the backend and command that produced it) and the evaluation tables; also logged to
MLflow as an artifact.

    python -m demo.report outputs/demo            # reads the step summaries the demo wrote there

Inputs: the one-line summary JSONs each step writes (`summary_out=`, {"step", "metric", "value",
"backend", ...}) and the registry's lineage tags (m3.parents on every version).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from m3 import registry

PIPELINE = ("m3-base", "m3-expert-inquiry", "m3-expert-healthcare", "m3-expert-general", "m3-distill",
            "m3-mopd", "m3-draft", "m3-w4")  # fmt: skip


def lineage_edges(versions: dict[str, dict]) -> list[tuple[str, str]]:
    """(parent, child) pairs of "name vN" labels from each version's m3.parents tag."""
    edges = []
    for child, info in versions.items():
        for uri in info["parents"]:
            name, _, version = registry.parse_uri(uri)
            edges.append((f"{name} v{version}", child))
    return edges


def current_versions(names: tuple[str, ...] = PIPELINE, alias: str = "candidate") -> dict[str, dict]:
    """{"name vN": {"parents": [...], "stage": ...}} for the `alias` version of every registered name."""
    out = {}
    for name in names:
        try:
            mv = registry.get_version(f"models:/{name}@{alias}")
        except registry.RegistryError:
            continue
        out[f"{name} v{mv.version}"] = {
            "parents": json.loads(mv.tags.get("m3.parents", "[]")),
            "stage": mv.tags.get("m3.stage", "?"),
            "config_hash": mv.tags.get("m3.config_hash", "?"),
        }
    return out


def mermaid(versions: dict[str, dict]) -> str:
    ids = {
        label: f"n{i}"
        for i, label in enumerate(sorted({*versions, *(p for p, _ in lineage_edges(versions))}))
    }
    lines = ["```mermaid", "graph LR"]
    lines += [f'  {ids[label]}["{label}"]' for label in ids]
    lines += [f"  {ids[p]} --> {ids[c]}" for p, c in lineage_edges(versions)]
    return "\n".join([*lines, "```"])


def _eval_table(summary: dict) -> list[str]:
    """The nested metrics of an eval summary (per axis / per station) as a two-column table."""
    metrics = summary.get("metrics") or {}
    scores = Path(summary.get("out_dir") or "/nonexistent") / "metrics.json"
    if not metrics and scores.is_file():  # HealthBench: per axis and theme, simple-evals' keys
        metrics = {k: v for k, v in json.loads(scores.read_text()).items() if ":" in k and k.count(":") == 1}
    if not isinstance(metrics, dict) or not metrics:
        return []
    rows = [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return [f"#### {summary['step']}", "", "| metric | value |", "|---|---|", *rows, ""]


def build(rows: list[dict], versions: dict[str, dict]) -> str:
    """The report markdown from the demo's summary rows (in step order) and the registry lineage."""
    out = ["# M3 pipeline report", "", "## Lineage of the registered versions", "", mermaid(versions), ""]
    out += [
        "## Every step",
        "",
        "| step | key metric | value | backend | command | s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cmd = f"`{r['command']}`" if r.get("command") else ""
        out.append(
            f"| {r['step']} | {r['metric']} | {r['value']} | {r.get('backend', '-')} | {cmd} | {r.get('seconds', '')} |"
        )
    tables = [line for r in rows for line in _eval_table(r)]
    if tables:
        out += ["", "## Evaluation tables", "", *tables]
    return "\n".join(out) + "\n"


def write(out_dir: Path, rows: list[dict], alias: str = "candidate") -> Path:
    """Write out_dir/report.md (the `alias` versions' lineage) and log it to MLflow ("pipeline-report")."""
    import mlflow

    registry.setup()
    path = out_dir / "report.md"
    path.write_text(build(rows, current_versions(alias=alias)))
    with mlflow.start_run(run_name="pipeline-report"):
        mlflow.log_artifact(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2):
        print(
            "usage: python -m demo.report <dir with the step summaries (rows.json)> [alias]", file=sys.stderr
        )
        return 2
    out_dir = Path(args[0])
    rows = json.loads((out_dir / "rows.json").read_text())
    print(write(out_dir, rows, *args[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
