"""ddbench entry point: `python benchmark.py --suite fashion-mnist` (see README.md)."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
