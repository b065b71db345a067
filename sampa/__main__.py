"""``python -m sampa``: see :mod:`sampa.cli`."""

import sys

from sampa.io import interrupted

#: commands that read run files only: started without importing torch (see sampa.report.commands)
PRESENTATION = ("aggregate", "table", "figure", "scorecard")

try:
    if sys.argv[1:2] and sys.argv[1] in PRESENTATION:
        from sampa.report.commands import main
    else:
        from sampa.cli import main
    status = main()
except KeyboardInterrupt:  # Ctrl-C during the imports (a command's own: sampa.io.command_status)
    status = interrupted(sys.argv[1] if sys.argv[1:2] else "")
sys.exit(status)
