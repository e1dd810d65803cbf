"""Atomic writes and output checks: every file or directory earthrep writes appears whole or not at all.

`atomic_path(target)` yields a temporary sibling to write (a file or a directory); on success it takes
the target's place, on any failure it is removed and the target is untouched. `staged_dir(target)` is the
same for a directory build with a fixed name, `.<name>.partial`, so that a build killed by a signal leaves
one known leftover that the next build removes. `replace(src, target)` is the last step on its own (for
builds that keep a named partial, e.g. a resumable feature cube): files move with one `os.replace`; a
directory cannot be renamed onto a non-empty one, so an old target is moved aside first and put back if
the second rename fails. `write_text` / `write_bytes` are the one-call forms.
Before a tool writes anything it checks its outputs: `check_writable` (the location can be written),
`check_target` (an existing output is replaced only with `--overwrite`, and only if it is of the kind the
tool writes) and `check_apart` (an output is neither an input nor inside one, nor holds one); they raise
`OutputError` naming the argument and the path.
Temporary names start with a dot and hold `.tmp-` or `.partial`, so listings that skip hidden files never
see them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterator, Mapping

from earthrep.errors import EarthrepError

PARTIAL = "partial"


class OutputError(EarthrepError):
  """An output location that cannot be written, or an existing output that must not be replaced."""


def remove(path: Path) -> None:
  """Removes a file, link or directory tree if present."""
  path = Path(path)
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  elif path.exists() or path.is_symlink():
    path.unlink()


def temporary_sibling(target: Path, tag: str = "tmp") -> Path:
  target = Path(target)
  return target.with_name(f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}")


def partial_sibling(target: Path) -> Path:
  """The fixed name of a directory build in progress: `.<name>.partial` beside the target."""
  target = Path(target)
  return target.with_name(f".{target.name}.{PARTIAL}")


def replace(src: Path, target: Path) -> None:
  """Moves `src` onto `target`, replacing whatever is there (see the module docstring)."""
  src, target = Path(src), Path(target)
  if src.is_dir() and target.exists():
    old = temporary_sibling(target, "old")
    os.replace(target, old)
    try:
      os.replace(src, target)
    except BaseException:
      os.replace(old, target)
      raise
    remove(old)
  else:
    os.replace(src, target)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary sibling of `target` to write; it replaces `target` when the block succeeds."""
  target = Path(target)
  tmp = temporary_sibling(target)
  try:
    yield tmp
    replace(tmp, target)
  finally:
    remove(tmp)


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
  """Yields an empty `.<name>.partial` directory (a leftover of a killed build is removed first); it
  replaces `target` when the block succeeds and is removed when it fails."""
  target = Path(target)
  stage = partial_sibling(target)
  remove(stage)
  stage.parent.mkdir(parents=True, exist_ok=True)
  stage.mkdir()
  try:
    yield stage
    replace(stage, target)
  finally:
    remove(stage)


def write_text(target: str | os.PathLike, text: str) -> Path:
  with atomic_path(target) as tmp:
    tmp.write_text(text)
  return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
  with atomic_path(target) as tmp:
    tmp.write_bytes(data)
  return Path(target)


# ---------------------------------------------------------------------------------------------
# Checks before anything is written.
# ---------------------------------------------------------------------------------------------
def check_writable(target: str | os.PathLike, arg: str = "--out") -> None:
  """Raises OutputError unless `target` can be created: its nearest existing ancestor is a directory in
  which a (removed again at once) probe directory can be made. Permissions alone do not tell (root,
  read-only file systems), so the probe tries."""
  target = Path(target).absolute()
  ancestor = target.parent
  while not ancestor.exists() and ancestor != ancestor.parent:
    ancestor = ancestor.parent
  if not ancestor.is_dir():
    raise OutputError(f"{arg} {target}: {ancestor} is a file, not a directory")
  if target.exists():
    return
  try:
    probe = tempfile.mkdtemp(prefix=".earthrep-probe-", dir=ancestor)
  except OSError as e:
    raise OutputError(f"{arg} {target}: cannot write in {ancestor} ({e.strerror or e})") from e
  os.rmdir(probe)


def is_empty_dir(path: Path) -> bool:
  return path.is_dir() and not any(path.iterdir())


def check_target(target: str | os.PathLike, *, arg: str = "--out", overwrite: bool = False,
                 kind: str = "output", is_kind: Callable[[Path], bool] | None = None,
                 directory: bool = True) -> bool:
  """Checks an output path before a run; returns True if an existing output will be replaced.

  A missing path (or, for `directory` outputs, an empty directory) is fine. An existing one needs
  `overwrite`, and even then must look like what the tool writes (`is_kind`), so that `--overwrite` can
  never replace a user's unrelated folder or file."""
  target = Path(target)
  check_writable(target, arg)
  if not (target.exists() or target.is_symlink()):
    return False
  if directory and target.is_file():
    raise OutputError(f"{arg} {target}: is a file; expected a directory ({kind})")
  if directory and is_empty_dir(target):
    return False
  if is_kind is not None and not is_kind(target):
    raise OutputError(f"{arg} {target}: exists and is not a {kind}; refusing to replace it "
                      "(choose another path)")
  if not overwrite:
    raise OutputError(f"{arg} {target}: exists ({kind}); pass --overwrite to replace it")
  return True


def _inside(inner: Path, outer: Path) -> bool:
  return inner == outer or outer in inner.parents


def check_apart(target: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                arg: str = "--out") -> None:
  """Raises OutputError if the output `target` is one of the `inputs` (argument -> path), lies inside
  one, or holds one: writing it would destroy what the run reads."""
  out = Path(target).resolve()
  for name, path in inputs.items():
    if path is None:
      continue
    src = Path(path).resolve()
    if _inside(out, src) or _inside(src, out):
      raise OutputError(f"{arg} {target}: overlaps the input {name} {path}; choose an output outside it")
