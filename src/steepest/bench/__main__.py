"""``python -m steepest.bench``: the ``steepest-bench`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
