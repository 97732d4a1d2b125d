"""What every entry point does around its own work: the command line, "already registered?", the
registration with its alias, and the one-line summary the demo's table reads.

    from m3.runs import StageRun, run_entry, write_summary

    def main(cfg):
        run = StageRun("m3-distill", cfg, stage="stage2", parents=[cfg.init, ...], alias=cfg.alias)
        if (mv := run.up_to_date(cfg.summary_out, backend="clip_fkl")) is not None:
            return mv
        ...                                               # the stage's own work
        return run.publish(model_dir, summary_out=cfg.summary_out, metric=..., value=..., backend=...)

    if __name__ == "__main__":
        sys.exit(run_entry("stage2", main))

`StageRun` is the only place that pairs `registry.find_version` with `registry.set_alias`, so a
re-run of the same config (same parents) is skipped the same way in every stage, and the alias a
run registers under (`candidate` for the tiny/cluster presets, `real` for the real preset) is the
one it re-points when skipping.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from m3 import registry
from m3.config import config_hash

# keys that say where a run writes, not what it computes: never part of the "same config" hash
RUN_LOCATION_KEYS = ("tracking", "out_dir", "summary_out", "dry_run")


def write_summary(path: str | Path | None, step: str, metric: str, value: Any, backend: str, **extra) -> None:
    """The one-line summary JSON a step leaves for the demo's table and report (no-op for None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        row = {"step": step, "metric": metric, "value": value, "backend": backend, **extra}
        Path(path).write_text(json.dumps(row) + "\n")


def _summarises(path: str | Path | None, step: str, version: str | int) -> bool:
    """Whether `path` holds the summary this step's version wrote ("... (vN)" or "vN" as its value)."""
    if not path or not Path(path).is_file():
        return False
    try:
        row = json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        return False
    value = str(row.get("value", "")) if isinstance(row, dict) and row.get("step") == step else ""
    return re.search(rf"(^|\(|\s)v{version}\)?$", value) is not None


class StageRun:
    """One entry point's registration: `name` is the registered model, `stage` its lineage tag,
    `step` its label in the demo's table (default: the stage)."""

    def __init__(
        self,
        name: str,
        config: Any,
        *,
        stage: str,
        step: str | None = None,
        parents: Sequence[str] = (),
        alias: str = "candidate",
        exclude: tuple[str, ...] = RUN_LOCATION_KEYS,
    ) -> None:
        self.name, self.config, self.stage, self.step = name, config, stage, step or stage
        self.parents, self.alias = list(parents), alias
        self.config_hash = config_hash(config, exclude=exclude)

    def up_to_date(self, summary_out: str | None, backend: str):
        """The version built from the same config and parents, re-aliased and summarised; else None."""
        mv = registry.find_version(self.name, self.config_hash, self.parents)
        if mv is None:
            return None
        registry.set_alias(self.name, self.alias, mv.version)
        print(f"{self.name}: up to date (version {mv.version}, config {self.config_hash}, @{self.alias})")
        if not _summarises(
            summary_out, self.step, mv.version
        ):  # a resumed demo keeps the figures it measured
            write_summary(summary_out, self.step, "registered (up to date)", f"v{mv.version}", backend)
        return mv

    def publish(
        self,
        model_dir: str | Path,
        *,
        summary_out: str | None = None,
        metric: str = "registered",
        value: Any = None,
        backend: str = "-",
        by_reference: bool = False,
        data_hashes: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        **extra: Any,
    ):
        """Register `model_dir` with lineage under `self.alias`, print it, write the summary row.

        `value` may hold "{version}", filled with the new version number."""
        mv = registry.publish(
            model_dir,
            self.name,
            stage=self.stage,
            parents=self.parents,
            config=self.config,
            data_hashes=data_hashes,
            by_reference=by_reference,
            # the hash find_version compares: run-location keys excluded
            tags={"m3.config_hash": self.config_hash, **(tags or {})},
            alias=self.alias,
            description=description,
        )
        print(f"{self.name}: registered version {mv.version} (models:/{self.name}@{self.alias})")
        shown = f"v{mv.version}" if value is None else str(value).format(version=mv.version)
        write_summary(summary_out, self.step, metric, shown, backend, **extra)
        return mv


def run_entry(config_name: str, main_fn: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    """The `python -m <stage or eval>` pattern: compose `configs/<config_name>` with the command
    line's Hydra overrides, run `main_fn(cfg)`; user errors print one line and exit 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from m3.config import compose

    try:
        main_fn(compose(config_name, list(sys.argv[1:] if argv is None else argv)))
    except (ValueError, OSError, registry.RegistryError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
