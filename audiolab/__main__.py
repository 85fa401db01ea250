"""`python -m audiolab ...` is the `audiolab` command."""

import sys

from audiolab.cli import main

sys.exit(main())
