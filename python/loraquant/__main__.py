"""`python -m loraquant ...`: the same command as the `loraquant` console script."""
import sys

from .cli import main

sys.exit(main())
