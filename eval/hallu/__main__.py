"""`python -m eval.hallu [hydra overrides]`: HealthBench-Hallu (configs/eval/hallu.yaml)."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from eval.hallu import run

    return run_entry("eval/hallu", run.main, argv)


if __name__ == "__main__":
    sys.exit(main())
