"""``python -m sampa``: see :mod:`sampa.cli`."""

import sys

#: commands that read run files only: started without importing torch (see sampa.report.commands)
PRESENTATION = ("aggregate", "table", "figure", "scorecard")

if sys.argv[1:2] and sys.argv[1] in PRESENTATION:
    from sampa.report.commands import main
else:
    from sampa.cli import main

sys.exit(main())
