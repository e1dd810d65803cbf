"""Run a measurement on an earlier commit beside the current tree, so that ratios come from one run.

`checkout(rev)` makes (or reuses) a detached `git worktree` of `rev` under the temp dir; `run(code, where)`
runs a Python snippet in a fresh process with `where` first on `sys.path` (the working tree or a worktree),
so the current code and an old commit are timed under the same conditions, one after the other. Both use
this checkout's virtual environment; the old commit must run with the same pinned packages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(rev: str) -> Path:
  """A worktree of `rev` (reused when it already exists at that commit)."""
  sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.strip()
  path = Path(tempfile.gettempdir()) / f"earthrep-baseline-{sha}"
  if not (path / "earthrep").is_dir():
    subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=True, capture_output=True)   # removed temp dirs
    subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=REPO, check=True,
                   capture_output=True)
  return path


def run(code: str, where: Path = REPO, timeout: int = 7200) -> dict:
  """Runs `code` (which must print one JSON object on its last stdout line) with `where` on sys.path."""
  env = {**os.environ, "PYTHONPATH": str(where)}
  proc = subprocess.run([sys.executable, "-c", code], cwd=where, env=env, capture_output=True, text=True,
                        timeout=timeout)
  if proc.returncode:
    raise RuntimeError(f"measurement in {where} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])
