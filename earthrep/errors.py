"""The project's error base class and the one way every command-line tool reports it.

Every foreseeable bad input (a file, a field, an argument, a model that does not fit the data) raises a
subclass of `EarthrepError` whose message names the file and the field and says what was expected. A tool's
entry point runs through `run_tool`, which prints such an error as one line on stderr and exits with status
2; anything else (a bug) keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class EarthrepError(ValueError):
  """A bad input or state the user can fix; the message starts with the file (or argument) and field."""


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
             prog: str = "earthrep") -> int:
  """Runs `main(argv)`; an EarthrepError becomes `<prog>: error: <message>` on stderr and exit status 2."""
  try:
    return int(main(argv) or 0)
  except EarthrepError as e:
    print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
    return 2
