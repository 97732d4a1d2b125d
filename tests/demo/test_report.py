"""The pipeline report: lineage diagram from the registry, every step's row, eval tables."""

import json

from demo import report
from m3 import registry


def test_report_shows_lineage_rows_and_eval_tables(mlflow_store, tiny_dir, tmp_path):
    registry.publish(tiny_dir, "m3-base", stage="base")
    for d in ("inquiry", "healthcare", "general"):
        registry.publish(tiny_dir, f"m3-expert-{d}", stage="stage1", parents=["models:/m3-base@candidate"])
    experts = [f"models:/m3-expert-{d}@candidate" for d in ("inquiry", "healthcare", "general")]
    registry.publish(tiny_dir, "m3-distill", stage="stage2", parents=experts)
    versions = report.current_versions()
    assert set(versions) == {"m3-base v1", "m3-expert-inquiry v1", "m3-expert-healthcare v1",
                             "m3-expert-general v1", "m3-distill v1"}  # fmt: skip
    edges = report.lineage_edges(versions)
    assert ("m3-base v1", "m3-expert-general v1") in edges and (
        "m3-expert-inquiry v1",
        "m3-distill v1",
    ) in edges
    assert len(edges) == 6
    rows = [
        {
            "step": "quant",
            "metric": "W4 weight bytes",
            "value": "98.7% of BF16",
            "backend": "llm-compressor",
            "command": "python -m quant source=models:/m3-mopd@candidate",
            "seconds": 3.0,
        },
        {
            "step": "osce",
            "metric": "inquiry/lab/diagnosis",
            "value": "0.0/0.0/-20.0",
            "backend": "offline",
            "metrics": {"station_inquiry": 0.25, "n_cases": 5},
        },
    ]
    md = report.build(rows, versions)
    assert md.count(" --> ") == 6 and "```mermaid" in md
    assert (
        "| quant | W4 weight bytes | 98.7% of BF16 | llm-compressor | `python -m quant source=models:/m3-mopd@candidate` | 3.0 |"
        in md
    )
    assert "| station_inquiry | 0.25 |" in md
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    assert report.main([str(tmp_path)]) == 0 and (tmp_path / "report.md").read_text() == md
