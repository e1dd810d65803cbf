"""Helpers shared by the tests: random-weight fusion models and their model directories, and the
bad-input harness of the command-line tests (`snapshot`, `run_cli`, `assert_refused`)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Sequence

from earthrep.interop import convert, torch_import


def random_fusion(variant: str = "test", **kwargs):
  """(FusionModel, params) with torch-like random weights (`torch_import.random_fusion`), tiny by default."""
  return torch_import.random_fusion(variant, **kwargs)


def save_fusion_dir(model, params, out: str | Path) -> Path:
  """A model directory in the converted-checkpoint layout: `<out>/model_config.json` + `<out>/0/params`."""
  return convert.save_params(out, params, convert.model_config(model))


def snapshot(*roots: str | Path) -> dict[str, str]:
  """sha256 of every file under `roots` (a file root counts itself), keyed by path: equal snapshots mean
  nothing was added, removed or changed."""
  out = {}
  for root in map(Path, roots):
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
      out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
  return out


def run_cli(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys) -> tuple[int, str]:
  """(exit status, stderr) of a tool's `main(argv)` run in-process (argparse exits are statuses too)."""
  capsys.readouterr()
  try:
    rc = main([str(a) for a in argv])
  except SystemExit as e:
    rc = e.code if isinstance(e.code, int) else 1
  return rc, capsys.readouterr().err


def assert_refused(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys, pattern: str,
                   *roots: str | Path, usage: bool = False) -> str:
  """The tool refuses: exit status 2, one error line on stderr matching `pattern` (no traceback; argparse's
  own errors, `usage=True`, come after its usage lines), and every file under `roots` byte-identical
  (nothing written, nothing removed). Returns the error line."""
  before = snapshot(*roots)
  rc, err = run_cli(main, argv, capsys)
  lines = [line for line in err.splitlines() if line.strip()]
  assert rc == 2, f"exit status {rc}, stderr:\n{err}"
  assert "Traceback" not in err and lines, err
  if usage:
    assert lines[0].startswith("usage:"), err
    lines = lines[-1:]
  assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
  assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
  assert snapshot(*roots) == before, "files changed"
  return lines[0]
