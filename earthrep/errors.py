"""The project's error base class and the one way every command-line tool reports it.

Every foreseeable bad input (a file, a field, an argument, a model that does not fit the data, an output
that exists or cannot be written) raises a subclass of `EarthrepError` whose message names the file and
the field and says what was expected. A tool's entry point runs through `run_tool`, which prints such an
error as one line on stderr (`<prog>: error: <message>`, a multi-line message joined with "; ") and exits
with status 2; an interrupt (Ctrl-C) prints one line and exits 130. Anything else (a bug) keeps its
traceback. Tools that write outputs validate every argument and input first and never replace what they
did not create in the same run unless `--overwrite` is given (README.md, "Errors and existing outputs").
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130


class EarthrepError(ValueError):
  """A bad input or state the user can fix; the message starts with the file (or argument) and field."""


def one_line(message: str) -> str:
  """A message on one line: its first line, then the others joined with '; ' (e.g. lists of keys)."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  return f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def run_tool(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
             prog: str = "earthrep") -> int:
  """Runs `main(argv)`; an EarthrepError becomes `<prog>: error: <message>` on stderr and exit status 2."""
  try:
    return int(main(argv) or 0)
  except EarthrepError as e:
    print(f"{prog}: error: {one_line(str(e))}", file=sys.stderr, flush=True)
    return EXIT_ERROR
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED
