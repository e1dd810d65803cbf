r"""Where a stage-1 training step spends its time: XLA's per-op timings from a `jax.profiler` trace.

  python -m benchmarks.profile_step                              # full-size S2, batch 16
  python -m benchmarks.profile_step --size runlocal --batch 16 --conv-impl direct

Compiles the trainer's `train_step` on random patches, runs it a few times under `jax.profiler.trace`
(a Perfetto trace in `--out`), and prints the top ops by time per step with their output shape, whether
they belong to the forward or the backward pass and the model layer (from the HLO metadata), then the
time by kind of op (dot/conv kernels, FFTs, transposes and copies, other fusions) and by layer.
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from earthrep.training import configs, optim, tasks, trainer


def _step(sensor: str, size: str, batch: int, conv_impl: str | None):
  config = configs.stage1_config(sensor, size)
  if conv_impl:
    config.model.conv_impl = conv_impl
  task = tasks.make_task(config)
  tx = optim.make_optimizer(config.optimizer)
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 0.4, (batch, 11, 15, 15, config.model.channels)).astype(np.float32)
  data = {f"{sensor}_x": x, f"{sensor}_target": x, f"{sensor}_target_mask": rng.uniform(size=x.shape) > 0.1,
          f"{sensor}_gaps": rng.integers(1, 15, (batch, 10)).astype(np.int32)}
  key = jax.random.key(0)
  params = jax.jit(task.init)(key, task.example_batch(batch))
  args = (params, tx.init(params), {k: jnp.asarray(v) for k, v in data.items()}, jnp.asarray(100, jnp.int32),
          jnp.asarray(1.0), key)
  compiled = jax.jit(functools.partial(trainer.train_step, task, tx, config.optimizer)).lower(*args).compile()
  return compiled, args


def _hlo_info(hlo_text: str) -> dict[str, tuple[str, str]]:
  """instruction name -> (output shape, layer path from its metadata)."""
  info = {}
  for m in re.finditer(r"^\s*%?([\w.\-]+) = (\S+) \w+\(.*?\)(.*)$", hlo_text, re.M):
    name, shape, rest = m.groups()
    meta = re.search(r'op_name="([^"]*)"', rest)
    info[name] = (shape, meta.group(1) if meta else "")
  return info


def _kind(op: str) -> str:
  base = re.sub(r"\.\d+$", "", op)
  if base.startswith(("ynn_fusion", "dot", "convolution")):
    return "dot/conv kernels"
  if base.startswith("fft"):
    return "FFT"
  if "transpose" in base or "copy" in base or "concatenate" in base:
    return "transposes, copies, concatenations"
  return "other fusions (elementwise, reductions, pads)"


def _layer(meta: str) -> str:
  parts = [p for p in meta.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose("))
           and "TransformerAE." not in p]
  return "/".join(parts[:3]) or "(no metadata)"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--sensor", default="s2")
  p.add_argument("--size", default="", help="config variant: '' (full size), runlocal or test")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--conv-impl", default=None, help="auto | fft | direct (default: the config's)")
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--top", type=int, default=12)
  p.add_argument("--out", default=None, help="trace folder (default: a temp dir)")
  a = p.parse_args(argv)
  compiled, args = _step(a.sensor, a.size, a.batch, a.conv_impl)
  info = _hlo_info(compiled.as_text())
  jax.block_until_ready(compiled(*args))
  out = Path(a.out or tempfile.mkdtemp(prefix="earthrep-profile-"))
  with jax.profiler.trace(str(out), create_perfetto_trace=True):
    for _ in range(a.steps):
      jax.block_until_ready(compiled(*args))
  trace = sorted(glob.glob(str(out / "plugins/profile/*/perfetto_trace.json.gz")))[-1]
  per_op = collections.Counter()
  for e in json.load(gzip.open(trace))["traceEvents"]:
    hlo_op = (e.get("args") or {}).get("hlo_op")
    if e.get("ph") == "X" and hlo_op:
      per_op[hlo_op] += e["dur"] / 1e3 / a.steps   # ms per step
  total = sum(per_op.values())
  print(f"{a.sensor} {a.size or 'full'} batch {a.batch} conv_impl {a.conv_impl or 'config'}: "
        f"{total:.0f} ms of ops per step (trace {trace})")
  print("| share | ms/step | op | output | pass | layer |\n|---|---|---|---|---|---|")
  for op, ms in per_op.most_common(a.top):
    shape, meta = info.get(op, ("?", ""))
    print(f"| {ms / total:.1%} | {ms:.1f} | {op} | {shape.split('{')[0]} | "
          f"{'backward' if 'transpose(' in meta else 'forward'} | {_layer(meta)} |")
  for title, key in (("kind of op", lambda op: _kind(op)), ("layer", lambda op: _layer(info.get(op, ('', ''))[1]))):
    groups = collections.Counter()
    for op, ms in per_op.items():
      groups[key(op)] += ms
    print(f"\nby {title}:")
    for name, ms in groups.most_common(a.top):
      print(f"  {ms / total:6.1%} {ms:8.1f} ms  {name}")


if __name__ == "__main__":
  main()
