"""HealthBench command line.

    python -m eval.healthbench run [hydra overrides]      # generate, grade, score, log (eval/healthbench/run.py)
    python -m eval.healthbench score --graded GRADED.jsonl --out METRICS.json [--seed 0] [--n-bootstrap 1000]

`score` reads graded records (a HealthBench record + `completion` + `criteria_met` on every rubric
item, see `m3.data.healthbench`), writes the metrics JSON with simple-evals' key names
("overall_score", "overall_score:n_samples", "axis:accuracy:bootstrap_std", ...) and prints a
short table. A malformed line exits with code 2 and "file:line: field ..." on stderr.

Subcommands are registered by `add_<name>_parser(subparsers)` and run by `cmd_<name>(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from eval.healthbench.scoring import N_BOOTSTRAP, score_graded
from m3.data.healthbench import load_graded
from m3.registry import RegistryError

# Rows of the printed table: the headline and the per-axis / per-theme breakdown of the paper.
# Every key (clusters, categories, levels) is in the JSON file.
_TABLE_PREFIXES = ("overall_score", "axis:", "theme:")


def add_score_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score", help="aggregate graded records into simple-evals' metrics JSON")
    p.add_argument("--graded", required=True, type=Path, help="JSONL of graded HealthBench records")
    p.add_argument("--out", required=True, type=Path, help="where to write the metrics JSON")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP, help="bootstrap resamples (default 1000)")
    p.set_defaults(func=cmd_score)
    return p


def format_table(metrics: dict) -> str:
    """Mean, bootstrap std and n for overall_score and every axis:/theme: key."""
    names = [k for k in metrics if ":n_samples" not in k and ":bootstrap_std" not in k]
    shown = [k for k in names if k.startswith(_TABLE_PREFIXES)]
    shown.sort(key=lambda k: (k != "overall_score", k))
    width = max((len(k) for k in shown), default=6)
    lines = [f"{'metric':<{width}}  {'mean':>6}  {'std':>6}  {'n':>5}"]
    for k in shown:
        lines.append(
            f"{k:<{width}}  {metrics[k]:>6.4f}  {metrics[k + ':bootstrap_std']:>6.4f}  {metrics[k + ':n_samples']:>5d}"
        )
    hidden = len(names) - len(shown)
    if hidden:
        lines.append(f"(+{hidden} more keys in the metrics JSON: score, level:*, cluster:*, ...)")
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace) -> int:
    graded = load_graded(args.graded)
    metrics = score_graded(graded, n_resamples=args.n_bootstrap, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics))
    print(f"{len(graded)} graded examples -> {args.out}")
    return 0


def add_run_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("run", help="generate, grade (resumable) and score; configs/healthbench.yaml")
    p.add_argument(
        "overrides", nargs="*", help="hydra overrides, e.g. model=models:/m3-mopd@candidate data=hard"
    )
    p.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from eval.healthbench import run
    from m3.config import compose

    run.main(compose("eval/healthbench", args.overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.healthbench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_run_parser(subparsers)
    add_score_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, RegistryError, HydraException, OmegaConfBaseException) as e:
        # User errors (malformed line, missing file, bad flag value): one line, no traceback.
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a run that could not finish (e.g. judge down): resumable
        print(f"failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
