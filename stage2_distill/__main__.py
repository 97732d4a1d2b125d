"""`python -m stage2_distill [hydra overrides]` (make stage2): distil the experts into m3-distill."""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from m3.registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    from m3.config import compose
    from stage2_distill import train

    try:
        train.main(compose("stage2", list(sys.argv[1:] if argv is None else argv)))
    except (ValueError, RegistryError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
