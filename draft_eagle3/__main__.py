"""`python -m draft_eagle3 [hydra overrides]` (make draft): train the Eagle3 draft, register m3-draft."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from draft_eagle3 import train

    return run_entry("draft", train.main, argv)


if __name__ == "__main__":
    sys.exit(main())
