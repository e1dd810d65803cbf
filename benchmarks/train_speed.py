r"""Stage-1 training throughput: samples/s of one full step (forward, loss, backward, clip, AdamW).

  python -m benchmarks.train_speed                                  # full-size S2 and S1 AEs, batch 16, 256
  python -m benchmarks.train_speed --size runlocal --batches 32 --baseline 4f1ebeb

For each (sensor, batch) a fresh process compiles the same jitted `train_step` the trainer uses and times it
on random patches: wall seconds per step (median), process CPU seconds per step (both cores; robust when
other jobs share the machine), samples/s, the FLOPs of one step from XLA's cost analysis and the achieved
FLOP/s against a large-matmul ceiling measured in the same run. With `--baseline REV` the same measurement
of commit REV (a git worktree) runs right before each one of the current tree, and the ratios are printed.

Measured (2-core CPU, 2026-12-02, `--baseline 4f1ebeb --repeats 2`; 4f1ebeb = the multi-scale blocks on
XLA's convolutions; matmul ceiling 343 GFLOP/s; the reference PyTorch code ran the full-size S2 step at
batch 16 at 4.67 samples/s on this kind of machine, issue 12):
| sensor | batch | s/step | samples/s | GFLOP/step | 4f1ebeb s/step | speed-up (wall) | speed-up (CPU) |
| s2     | 16    | 2.14   | 7.49      | 123        | 3.92           | 1.84x           | 2.07x          |
| s2     | 256   | 51.1   | 5.01      | 1873       | 120.9          | 2.37x           | 2.51x          |
| s1     | 16    | 1.80   | 8.87      | 120        | 3.78           | 2.09x           | 2.23x          |
| s1     | 256   | 46.1   | 5.56      | 1829       | 136.9          | 2.97x           | 3.12x          |
"""
from __future__ import annotations

import argparse
import json

from benchmarks import baseline

# Runs inside a fresh process on the current tree or an earlier commit (whose module names differ).
_MEASURE = r'''
import functools, json, resource, sys, time
import jax, jax.numpy as jnp, numpy as np
if {new_layout}:
  from earthrep.training import configs, optim, tasks, trainer
  step = trainer.train_step
else:   # before the package layout of issue 16
  from earthrep import configs, optim, tasks, train
  step = train._train_step
sensor, size, batch, repeats = {sensor!r}, {size!r}, {batch}, {repeats}
config = configs.stage1_config(sensor, size)
task = tasks.make_task(config)
tx = optim.make_optimizer(config.optimizer)
rng = np.random.default_rng(0)
c = config.model.channels
x = rng.uniform(0, 0.4, (batch, 11, 15, 15, c)).astype(np.float32)
data = {{f"{{sensor}}_x": x, f"{{sensor}}_target": x, f"{{sensor}}_target_mask": rng.uniform(size=x.shape) > 0.1,
        f"{{sensor}}_gaps": rng.integers(1, 15, (batch, 10)).astype(np.int32)}}
data = {{k: jnp.asarray(v) for k, v in data.items()}}
key = jax.random.key(0)
params = jax.jit(task.init)(key, task.example_batch(batch))
opt_state = tx.init(params)
args = (params, opt_state, data, jnp.asarray(100, jnp.int32), jnp.asarray(1.0), key)
t0 = time.perf_counter()
compiled = jax.jit(functools.partial(step, task, tx, config.optimizer)).lower(*args).compile()
compile_s = time.perf_counter() - t0
cost = compiled.cost_analysis()
cost = cost[0] if isinstance(cost, (list, tuple)) else cost
flops = float((cost or {{}}).get("flops", float("nan")))
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
jax.block_until_ready(compiled(*args))
walls, cpus = [], []
for _ in range(repeats):
  w0, c0 = time.perf_counter(), cpu()
  jax.block_until_ready(compiled(*args))
  walls.append(time.perf_counter() - w0)
  cpus.append(cpu() - c0)
n = int(sum(np.size(a) for a in jax.tree.leaves(params)))
print(json.dumps(dict(wall_s=float(np.median(walls)), cpu_s=float(np.median(cpus)), flops=flops, params=n,
                      compile_s=compile_s, rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)))
'''

_CEILING = r'''
import json, time, jax, jax.numpy as jnp
a = jax.random.normal(jax.random.key(0), (2048, 2048)); f = jax.jit(lambda x: x @ x)
f(a).block_until_ready(); best = 1e9
for _ in range(5):
  t = time.perf_counter(); f(a).block_until_ready(); best = min(best, time.perf_counter() - t)
print(json.dumps({"flop_s": 2 * 2048 ** 3 / best}))
'''


def measure(sensor: str, size: str, batch: int, repeats: int, where=baseline.REPO) -> dict:
  code = _MEASURE.format(sensor=sensor, size=size, batch=batch, repeats=repeats,
                        new_layout=(where / "earthrep" / "training").is_dir())
  return baseline.run(code, where)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--size", default="", help="config variant: '' (full size), runlocal or test")
  p.add_argument("--sensors", default="s2,s1")
  p.add_argument("--batches", default="16,256")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--baseline", default=None, help="a commit to time beside the current tree (git worktree)")
  a = p.parse_args(argv)
  old_tree = baseline.checkout(a.baseline) if a.baseline else None
  ceiling = baseline.run(_CEILING)["flop_s"]
  print(f"matmul ceiling {ceiling / 1e9:.1f} GFLOP/s (2048^2 float32); size {a.size or 'full'}; "
        f"baseline {a.baseline or '-'}")
  head = ("| sensor | batch | s/step | CPU s/step | samples/s | GFLOP/step | GFLOP/s (of ceiling) | compile s |"
          + (" baseline s/step | baseline samples/s | speed-up (wall) | speed-up (CPU time) |" if old_tree else ""))
  print(head)
  print("|" + "---|" * (head.count("|") - 1))
  for sensor in a.sensors.split(","):
    for b in map(int, a.batches.split(",")):
      old = measure(sensor, a.size, b, a.repeats, old_tree) if old_tree else None
      new = measure(sensor, a.size, b, a.repeats)
      row = (f"| {sensor} | {b} | {new['wall_s']:.3f} | {new['cpu_s']:.2f} | {b / new['wall_s']:.2f} | "
             f"{new['flops'] / 1e9:.0f} | {new['flops'] / new['wall_s'] / 1e9:.1f} "
             f"({new['flops'] / new['wall_s'] / ceiling:.0%}) | {new['compile_s']:.0f} |")
      if old:
        row += (f" {old['wall_s']:.3f} | {b / old['wall_s']:.2f} | {old['wall_s'] / new['wall_s']:.2f}x | "
                f"{old['cpu_s'] / new['cpu_s']:.2f}x |")
      print(row, flush=True)
      print(json.dumps({"sensor": sensor, "batch": b, "new": new, "baseline": old}), flush=True)


if __name__ == "__main__":
  main()
