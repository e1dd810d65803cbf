"""Shared fixtures: a tiny demo world and its shards, built once per test session (never downloaded)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# XLA's CPU compiles dominate this suite (the same tiny programs are built by many tests and by the
# training subprocesses they start), so compiled programs are cached on disk and shared across them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REFERENCE_VECTORS = Path(os.environ.get("EARTHREP_REFERENCE_VECTORS",
                                        REPO.parent / "shared" / "reference" / "vectors"))

# Small enough to build in seconds, large enough for a few windows per cube and one cube per split.
TINY_WORLD = dict(seed=3, size=48, sites=3, start="2019-03-01", days=240)


def run_module(module: str, *args: str, env: dict | None = None, timeout: int = 600
               ) -> subprocess.CompletedProcess:
  """Runs `python -m module args` from the repo root; raises with its output on failure."""
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=timeout)
  if proc.returncode:
    raise AssertionError(f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
  return proc


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
  from data_prep import demo_world
  out = tmp_path_factory.mktemp("tiny_world")
  demo_world.make_world(out, **TINY_WORLD)
  return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_world, tmp_path_factory):
  """Returns a function modality -> shard directory (built on first use)."""
  built: dict[str, Path] = {}

  def get(modality: str) -> Path:
    if modality not in built:
      out = tmp_path_factory.mktemp(f"shards_{modality}")
      run_module("data_prep.build_shards", "--cubes", str(tiny_world / "cubes"), "--out", str(out),
                 "--modality", modality)
      built[modality] = out
    return built[modality]
  return get
