"""What every evaluation run shares: the evaluated model's reference, a resumable run directory,
repo-relative data paths, and the MLflow record linked back to the registered model version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from m3 import registry
from m3.config import REPO_ROOT, config_hash, log_config
from m3.runs import write_summary


def evaluated_model(cfg: Any) -> tuple[str, registry.ModelRef | None]:
    """(reference written into reports, pinned registry version or None for endpoints/directories)."""
    if cfg.model and cfg.model.startswith("models:/") and not cfg.endpoint:
        pinned = registry.pin(cfg.model)
        return pinned.uri, pinned
    return cfg.endpoint or cfg.model or "", None


def repo_path(path: str) -> str:
    """A relative data path resolves against the repo when it is not found from the working dir."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return str(REPO_ROOT / p)
    return path


def run_dir(cfg: Any, kind: str, data: str, model_ref: str) -> Path:
    """`cfg.out_dir`, else outputs/<kind>/<model>-<data>-<config hash>: the same command resumes."""
    if cfg.out_dir:
        out = Path(cfg.out_dir)
    else:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model_ref}-{Path(data).stem}")[:80]
        chash = config_hash(cfg, exclude=("tracking", "out_dir", "summary_out"))
        out = REPO_ROOT / "outputs" / kind / f"{slug}-{chash}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def read_jsonl_resumable(path: Path) -> list[dict]:
    """Rows of a results file written line by line; a line torn by a crash mid-write (and anything
    after it) is dropped and the file rewritten, so appends start on a clean line."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


def record_run(
    cfg: Any,
    *,
    kind: str,
    run_name: str,
    model_ref: str,
    pinned: registry.ModelRef | None,
    tags: dict[str, str],
    metrics: dict[str, float],
    artifacts: list[Path],
    link: dict,
    summary: dict,
) -> None:
    """Log the run to MLflow (config, tags, metrics, artifacts), tag the evaluated model version
    with `m3.eval.<kind>` pointing at the run, and write `cfg.summary_out` for the demo."""
    import mlflow

    with mlflow.start_run(run_name=run_name) as run:
        log_config(cfg)
        mlflow.set_tags({"m3.eval": kind, "m3.model_uri": model_ref, **tags})
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(str(path))
        if pinned is not None:
            registry.set_version_tag(
                pinned, f"m3.eval.{kind}", json.dumps({"run_id": run.info.run_id, **link})
            )
    write_summary(cfg.summary_out, **summary)
