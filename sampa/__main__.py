"""``python -m sampa``: see :mod:`sampa.cli`."""

import sys

from sampa.cli import main

sys.exit(main())
