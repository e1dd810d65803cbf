"""What produced an output, recorded without secrets or machine paths.

`code_version()` is recorded in shard metadata, feature cubes and reports. Paths are recorded as the user
gave them (`user_path`), never resolved to absolute machine paths; `command_line` is the command as typed
(`python -m <module> <args>`, not the interpreter's file paths). Anything that may hold a URL passes
through `redact` (strings) or `redact_tree` (JSON-like values): credentials in a URL (`user:password@`)
the values of query parameters (tokens, signatures, keys) and HTTP authorization headers become `***`, in
reports and metadata alike, and in logs through `redact_logs` (a filter on the root logger's handlers, so
that libraries' debug lines are redacted too). `fingerprint` keys cached or resumable intermediates by what
produced them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REDACTED = "***"
# scheme://user[:password]@  ->  scheme://***@
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# ?key=value / &key=value (any query parameter: tokens, SAS signatures, API keys)
_QUERY = re.compile(r"(?P<sep>[?&])(?P<key>[A-Za-z0-9_.\-\[\]]+)=(?P<value>[^&#\s'\"]+)")
# HTTP authorization headers as libraries log them (Basic user:password in base64, Bearer tokens)
_AUTH_HEADER = re.compile(r"(?P<head>authorization['\"]?\s*[:=]\s*['\"]?(?:basic|bearer|token)?\s*)"
                          r"(?P<value>[A-Za-z0-9+/=._~-]+)", re.IGNORECASE)


def code_version() -> str:
  """`git describe` of the checkout (with -dirty), else the installed package version."""
  try:
    out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=Path(__file__).parent,
                         capture_output=True, text=True, timeout=10)
    if out.returncode == 0 and out.stdout.strip():
      return out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    pass
  from importlib import metadata
  try:
    return "earthrep " + metadata.version("earthrep")
  except metadata.PackageNotFoundError:
    return "unknown"


def redact(text: str) -> str:
  """`text` with URL credentials and query-parameter values replaced by ***."""
  text = _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", str(text))
  text = _AUTH_HEADER.sub(lambda m: f"{m['head']}{REDACTED}", text)
  return _QUERY.sub(lambda m: f"{m['sep']}{m['key']}={REDACTED}", text)


class RedactingFilter(logging.Filter):
  """Redacts every record a handler emits (the message with its arguments), libraries' records included."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    redacted = redact(message)
    if redacted != message:
      record.msg, record.args = redacted, None
    return True


def redact_logs() -> None:
  """Adds a RedactingFilter to every handler of the root logger (once); tools that handle URLs call it."""
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
      handler.addFilter(RedactingFilter())


def redact_tree(value: Any) -> Any:
  """`redact` applied to every string (keys included) of a JSON-like value."""
  if isinstance(value, str):
    return redact(value)
  if isinstance(value, dict):
    return {redact_tree(k): redact_tree(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [redact_tree(v) for v in value]
  return value


def user_path(path: str | os.PathLike) -> str:
  """A path for provenance: as the user gave it (relative stays relative), redacted; never resolved."""
  return redact(os.fspath(path))


def command_line(module: str, argv: Sequence[str]) -> str:
  """`python -m <module> <args>` as typed, redacted."""
  return redact(shlex.join(["python", "-m", module, *map(str, argv)]))


def fingerprint(*parts: Any) -> str:
  """A short stable hash of arrays, bytes and JSON-able values (keys of caches and resumable runs)."""
  digest = hashlib.sha256()
  for part in parts:
    if isinstance(part, np.ndarray):
      array = np.ascontiguousarray(part)
      digest.update(f"{array.dtype.str}{array.shape}".encode())
      digest.update(array.view(np.uint8).reshape(-1) if array.dtype != object else str(part.tolist()).encode())
    elif isinstance(part, (bytes, bytearray)):
      digest.update(part)
    else:
      digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    digest.update(b"\x00")
  return digest.hexdigest()[:24]


def files_fingerprint(root: str | os.PathLike) -> str:
  """`fingerprint` of every file under `root` (names relative to it, and contents)."""
  root = Path(root)
  parts: list[Any] = []
  for path in sorted(p for p in root.rglob("*") if p.is_file()):
    parts += [path.relative_to(root).as_posix(), path.read_bytes()]
  return fingerprint(*parts)
