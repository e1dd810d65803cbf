"""What produced an output: the code version recorded in shard metadata, feature cubes and reports."""
from __future__ import annotations

import subprocess
from pathlib import Path


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
