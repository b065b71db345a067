"""One check group in its own process: ``python -m sampa.doctor.child module:function RESULT.json``.

The group's function returns its rows as a list or yields them one by one; ``RESULT.json`` is rewritten
(atomically) after every row, so a group killed at its time limit or dying halfway still reports the
rows it finished (:func:`sampa.doctor.run_group` reads them).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Iterable
from dataclasses import asdict

from sampa import io
from sampa.doctor.common import FAIL, Row, error_line, machine


def rows_of(target: str) -> Iterable[Row]:
    """The rows of ``module:function`` called with this machine, as they come; an exception ends them
    with one failed row naming it (the traceback goes to the log)."""
    module, _, function = target.partition(":")
    try:
        yield from getattr(importlib.import_module(module), function)(machine())
    except Exception as err:  # the group failed from here on: one row with the error
        traceback.print_exc()
        yield Row(f"[{function}]", "raised", error_line(err), FAIL)


def main(target: str, out: str) -> None:
    rows: list[Row] = []
    io.write_json(out, [])
    for row in rows_of(target):
        rows.append(row)
        print(f"{row.status:>4}  {row.check}: {row.figure}", flush=True)
        io.write_json(out, [asdict(r) for r in rows])


if __name__ == "__main__":
    main(*sys.argv[1:3])
