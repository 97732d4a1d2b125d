"""`python -m demo [hydra overrides]` (make demo): the whole pipeline, each step resumable."""

import sys

from demo.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
