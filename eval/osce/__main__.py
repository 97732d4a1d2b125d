"""`python -m eval.osce [hydra overrides]`: the OSCE stations (configs/eval/osce.yaml)."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from eval.osce import run

    return run_entry("eval/osce", run.main, argv)


if __name__ == "__main__":
    sys.exit(main())
