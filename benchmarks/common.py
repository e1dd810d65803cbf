"""Shared measuring helpers for the benchmark scripts: wall time, matmul ceiling, compiled FLOPs."""
from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 3) -> dict[str, float]:
  """Median and min wall seconds of `fn()` (blocked until ready) after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def matmul_ceiling(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """Achievable FLOP/s of this backend: a large square matmul, best of `repeats`."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  t = time_call(lambda: f(a, b), warmup=2, repeats=repeats)["min_s"]
  return 2.0 * n ** 3 / t


def compiled_flops(jitted: Any, *args: Any, **kwargs: Any) -> float:
  """FLOPs of one call as counted by XLA's cost analysis of the compiled program (nan if absent)."""
  cost = jitted.lower(*args, **kwargs).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def peak_rss_gb() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
