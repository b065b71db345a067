"""One check group in its own process: ``python -m sampa.doctor.child module:function RESULT.json``."""

from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import asdict

from sampa import io
from sampa.doctor.common import FAIL, Row, machine


def run(target: str) -> list[Row]:
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)(machine())
    except Exception as err:  # the group failed as a whole: one row with the error, the traceback in the log
        traceback.print_exc()
        message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        return [Row(f"[{function}]", "raised", message[:160], FAIL)]


def main(target: str, out: str) -> None:
    rows = run(target)
    for row in rows:
        print(f"{row.status:>4}  {row.check}: {row.figure}", flush=True)
    io.write_json(out, [asdict(row) for row in rows])


if __name__ == "__main__":
    main(*sys.argv[1:3])
