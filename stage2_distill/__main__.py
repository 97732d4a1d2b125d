"""`python -m stage2_distill [hydra overrides]` (make stage2): distil the experts into m3-distill."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from stage2_distill import train

    return run_entry("stage2", train.main, argv)


if __name__ == "__main__":
    sys.exit(main())
