"""Atomic writes: every file or directory earthrep writes appears whole or not at all.

`atomic_path(target)` yields a temporary sibling to write (a file or a directory); on success it takes
the target's place, on any failure it is removed and the target is untouched. `replace(src, target)` is
that last step on its own (for builds that keep a named partial, e.g. a resumable feature cube): files
move with one `os.replace`; a directory cannot be renamed onto a non-empty one, so an old target is moved
aside first and put back if the second rename fails. `write_text` / `write_bytes` are the one-call forms.
Temporary names start with a dot and hold `.tmp-`, so listings that skip hidden files never see them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


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


def write_text(target: str | os.PathLike, text: str) -> Path:
  with atomic_path(target) as tmp:
    tmp.write_text(text)
  return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
  with atomic_path(target) as tmp:
    tmp.write_bytes(data)
  return Path(target)
