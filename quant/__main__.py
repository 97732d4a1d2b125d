"""`python -m quant [hydra overrides]` (make quant): GPTQ W4A16 of a registered model -> m3-w4."""

from __future__ import annotations

import sys

from m3.runs import run_entry


def main(argv: list[str] | None = None) -> int:
    from quant import quantize

    return run_entry("quant", quantize.main, argv)


if __name__ == "__main__":
    sys.exit(main())
