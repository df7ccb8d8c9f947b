"""``python -m realtime_pipeline``: see :mod:`realtime_pipeline.cli`."""

import sys

from .cli import main

sys.exit(main())
