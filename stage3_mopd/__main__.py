"""`python -m stage3_mopd [hydra overrides]` (make stage3): MOPD of m3-distill into m3-mopd."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from stage3_mopd import train

    return run_entry("stage3", train.main, argv)


if __name__ == "__main__":
    sys.exit(main())
