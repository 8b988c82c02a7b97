"""`python -m worldmodel.cli`: the same as the `worldmodel` command."""

import sys

from worldmodel.cli import main

sys.exit(main())
