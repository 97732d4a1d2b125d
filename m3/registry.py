"""MLflow model registry hand-off between stages.

Stages never guess "the latest checkpoint": each publishes its output as a registered model version
with lineage tags and the alias `candidate`, and the next stage resolves an explicit URI.

    from m3 import registry
    mv = registry.publish("out/expert", "m3-expert-inquiry", stage="stage1",
                          parents=["models:/m3-base@candidate"], config=cfg)
    path = registry.resolve("models:/m3-expert-inquiry@candidate")    # local directory
    m3 registry ls                                                    # CLI

Storage: small checkpoints are copied into the run's artifacts; huge ones (`by_reference=True`)
are registered as a manifest of file paths, sizes and sha256 that `resolve` verifies (set
`M3_REGISTRY_VERIFY=size` to check sizes only on multi-hundred-GB checkpoints).

Tracking store: `$MLFLOW_TRACKING_URI`, else a sqlite file `mlruns/mlflow.db` in the repo with
artifacts under `mlruns/artifacts` (both gitignored). Lineage tags on every version: m3.stage,
m3.git_commit, m3.config_hash, m3.parents (concrete `models:/name/version` URIs), m3.data_hashes,
m3.storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3.config import REPO_ROOT, config_hash

MANIFEST = "m3_manifest.json"
# Which make target produces each registered model, for "not found" messages.
PRODUCERS = {
    "m3-base": "make base",
    "m3-expert-inquiry": "make stage1 EXPERT=inquiry",
    "m3-expert-healthcare": "make stage1 EXPERT=healthcare",
    "m3-expert-general": "make stage1 EXPERT=general",
    "m3-distill": "make stage2",
    "m3-mopd": "make stage3",
    "m3-draft": "make draft",
    "m3-w4": "make quant",
}
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class RegistryError(RuntimeError):
    """A model URI that cannot be resolved, or a checkpoint that failed verification."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlruns' / 'mlflow.db'}"


def _is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def setup(experiment: str = "m3") -> str:
    """Point MLflow at our store and select `experiment` (created with a repo-local artifact root
    for local stores, so artifacts never land in whatever directory the user ran from)."""
    import mlflow

    uri = tracking_uri()
    _client()  # creates the sqlite directory
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if _is_local_store(uri):
            root = Path(os.environ.get("M3_ARTIFACT_ROOT", REPO_ROOT / "mlruns" / "artifacts"))
            location = (root.resolve() / experiment).as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def _client():
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_hash(path: str | Path) -> str:
    """sha256 (16 hex) over a file, or over a directory's relative paths and file contents."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16]


def build_manifest(model_dir: Path) -> dict:
    files = sorted(f for f in model_dir.rglob("*") if f.is_file())
    return {
        "root": str(model_dir.resolve()),
        "files": [
            {"path": str(f.relative_to(model_dir)), "size": f.stat().st_size, "sha256": sha256_file(f)}
            for f in files
        ],
    }


def verify_manifest(manifest: dict, mode: str | None = None) -> Path:
    """Check every file of a by-reference checkpoint; returns its root directory."""
    mode = mode or os.environ.get("M3_REGISTRY_VERIFY", "sha256")
    if mode not in ("sha256", "size"):
        raise ValueError(f"M3_REGISTRY_VERIFY must be 'sha256' or 'size', got {mode!r}")
    root = Path(manifest["root"])
    for entry in manifest["files"]:
        f = root / entry["path"]
        if not f.is_file():
            raise RegistryError(f"checkpoint file missing: {f} (listed in the registered manifest)")
        if f.stat().st_size != entry["size"]:
            raise RegistryError(f"checkpoint file changed size: {f} ({f.stat().st_size} != {entry['size']})")
        if mode == "sha256" and sha256_file(f) != entry["sha256"]:
            raise RegistryError(
                f"checkpoint file corrupted: {f} (sha256 differs from the registered manifest)"
            )
    return root


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"not a model URI: {uri!r}; use models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def _missing(name: str, what: str) -> RegistryError:
    make = PRODUCERS.get(name, "the stage that produces it")
    return RegistryError(f"{what} not found in the registry at {tracking_uri()}; produce it with `{make}`")


def get_version(uri: str):
    """The MLflow ModelVersion for `models:/name@alias` or `models:/name/version`."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_uri(uri)
    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise _missing(name, f"model {name!r}") from None
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException:
        raise _missing(
            name, f"{uri!r} ({'alias ' + alias if alias else 'version ' + str(version)})"
        ) from None


def pin(uri: str) -> ModelRef:
    """Resolve an alias to the concrete version it points at now (for lineage tags)."""
    mv = get_version(uri)
    return ModelRef(mv.name, str(mv.version))


def resolve(uri: str) -> Path:
    """Local directory of a registered model (downloaded if remote; manifest verified)."""
    import mlflow

    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.exists():
            raise RegistryError(f"{uri!r} is neither a models:/ URI nor an existing directory")
        return path
    mv = get_version(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, tracking_uri=tracking_uri()))
    manifest = local / MANIFEST
    if manifest.is_file():
        return verify_manifest(json.loads(manifest.read_text()))
    return local


def publish(
    model_dir: str | Path,
    name: str,
    *,
    stage: str,
    parents: list[str] | tuple[str, ...] = (),
    config: Any = None,
    data_hashes: dict[str, str] | None = None,
    by_reference: bool = False,
    tags: dict[str, str] | None = None,
    alias: str = "candidate",
    description: str = "",
):
    """Register `model_dir` as a new version of `name`, tag its lineage and point `alias` at it.

    Logs into the active MLflow run (the stage's run) or opens a short one. Returns the ModelVersion.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a model directory (no config.json)")
    lineage = {
        "m3.stage": stage,
        "m3.git_commit": git_commit(),
        "m3.config_hash": config_hash(config) if config is not None else "none",
        "m3.parents": json.dumps([pin(p).uri for p in parents]),
        "m3.data_hashes": json.dumps(data_hashes or {}, sort_keys=True),
        "m3.storage": "reference" if by_reference else "copy",
        **(tags or {}),
    }
    own_run = mlflow.active_run() is None
    if own_run:
        setup()
    run = mlflow.start_run(run_name=f"register-{name}") if own_run else mlflow.active_run()
    try:
        if by_reference:
            mlflow.log_dict(build_manifest(model_dir), f"model/{MANIFEST}")
        else:
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
        mlflow.set_tags(
            {f"registered.{name}": "model", **{k: v for k, v in lineage.items() if k != "m3.stage"}}
        )
        source = f"{run.info.artifact_uri}/model"
        client = _client()
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description=description or f"produced by `{PRODUCERS.get(name, stage)}`"
            )
        mv = client.create_model_version(name, source, run_id=run.info.run_id, tags=lineage)
        client.set_registered_model_alias(name, alias, mv.version)
    finally:
        if own_run:
            mlflow.end_run()
    return mv


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point `models:/name@alias` at `version` (re-running a registered config re-points its alias)."""
    _client().set_registered_model_alias(name, alias, str(version))


def set_version_tag(ref: ModelRef, key: str, value: str) -> None:
    """Tag one registered version (evaluations link their run to the model version they scored)."""
    _client().set_model_version_tag(ref.name, ref.version, key, value)


def find_version(name: str, cfg_hash: str, parents: list[str] | tuple[str, ...] = ()):
    """The newest version of `name` built from the same config and the same parent versions.

    Lets re-runs (the demo) skip work whose output is already registered. None if there is none.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    want_parents = json.dumps([pin(p).uri for p in parents])
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if mv.tags.get("m3.config_hash") == cfg_hash and mv.tags.get("m3.parents") == want_parents:
            return mv
    return None


def list_models() -> list[dict]:
    """Every registered model with its versions, aliases and lineage (for `m3 registry ls`)."""
    client = _client()
    out = []
    for rm in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = []
        for mv in sorted(client.search_model_versions(f"name='{rm.name}'"), key=lambda v: int(v.version)):
            versions.append(
                {
                    "version": str(mv.version),
                    "aliases": sorted(aliases.get(str(mv.version), [])),
                    "stage": mv.tags.get("m3.stage", ""),
                    "parents": json.loads(mv.tags.get("m3.parents", "[]")),
                    "config_hash": mv.tags.get("m3.config_hash", ""),
                    "git_commit": mv.tags.get("m3.git_commit", ""),
                    "storage": mv.tags.get("m3.storage", ""),
                    "run_id": mv.run_id,
                }
            )
        out.append({"name": rm.name, "versions": versions})
    return sorted(out, key=lambda m: m["name"])
