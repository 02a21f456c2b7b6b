"""`python -m slotspe_pipe` is the same as the `slotspe-pipe` console script."""

import sys

from slotspe_pipe.cli import main

sys.exit(main())
