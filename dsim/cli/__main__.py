"""`python -m dsim.cli` runs the `dsim` command."""

import sys

from dsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
