"""``python -m transferops``: the same command line as the ``transferops`` console script."""

import sys

from transferops.cli import main

sys.exit(main())
