"""``python -m geoseg``: the same command line as ``geoseg``."""

import sys

from geoseg.cli import main

sys.exit(main())
