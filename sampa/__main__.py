"""``python -m sampa``: see :mod:`sampa.cli`."""

import sys

if sys.argv[1:2] == ["aggregate"]:  # reads run files only: skip importing torch (see sampa.report.commands)
    from sampa.report.commands import main
else:
    from sampa.cli import main

sys.exit(main())
