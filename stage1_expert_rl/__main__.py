"""`python -m stage1_expert_rl [hydra overrides]` (make stage1): train and register one expert."""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from m3.registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    from m3.config import compose
    from stage1_expert_rl import train

    try:
        train.main(compose("stage1", list(sys.argv[1:] if argv is None else argv)))
    except (ValueError, RegistryError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
