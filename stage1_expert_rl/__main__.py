"""`python -m stage1_expert_rl [hydra overrides]` (make stage1): train and register one expert."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from stage1_expert_rl import train

    return run_entry("stage1", train.main, argv)


if __name__ == "__main__":
    sys.exit(main())
