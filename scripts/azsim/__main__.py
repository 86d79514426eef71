"""`python -m azsim ARGS` with scripts/ on sys.path: one call in this process, no server."""

import sys

from .main import main

sys.exit(main())
