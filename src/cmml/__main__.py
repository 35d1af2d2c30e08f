"""`python -m cmml` = the `cmml` console script."""

import sys

from cmml.cli import main

sys.exit(main())
