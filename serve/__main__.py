"""`python -m serve [hydra overrides]` (make serve): start an OpenAI-compatible server (serve/launch.py)."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from serve import launch

    return run_entry("serve/serve", launch.main, argv)


if __name__ == "__main__":
    sys.exit(main())
