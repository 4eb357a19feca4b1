"""`python -m stage0.cli`: the same as the `logline` console script."""

import sys

from stage0.cli.main import main

sys.exit(main())
