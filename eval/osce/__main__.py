"""`python -m eval.osce [hydra overrides]`: the OSCE stations (configs/eval/osce.yaml)."""

from __future__ import annotations

import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from m3.registry import RegistryError


def main(argv: list[str] | None = None) -> int:
    from eval.osce import run
    from m3.config import compose

    try:
        run.main(compose("eval/osce", list(sys.argv[1:] if argv is None else argv)))
    except (ValueError, OSError, RegistryError, HydraException, OmegaConfBaseException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
