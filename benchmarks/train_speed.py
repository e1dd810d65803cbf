r"""Stage-1 training throughput: samples/s of one full step (forward, loss, backward, clip, AdamW).

  python benchmarks/train_speed.py                       # full-size S2 and S1 AEs, batch 16 and 256
  python benchmarks/train_speed.py --size runlocal --batches 16,64

For each (sensor, batch) it compiles the same jitted `train_step` the trainer uses, times it on random
patches, and reports samples/s, the FLOPs of one step from XLA's cost analysis, the achieved FLOP/s and
its fraction of a large-matmul ceiling measured on the same machine in the same run.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from earthrep.training import configs, optim, tasks, trainer  # noqa: E402


def random_batch(sensor: str, channels: int, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  x = rng.uniform(0, 0.4, (b, 11, 15, 15, channels)).astype(np.float32)
  mask = rng.uniform(size=x.shape) > 0.1
  gaps = rng.integers(1, 15, (b, 10)).astype(np.int32)
  return {f"{sensor}_x": x, f"{sensor}_target": x, f"{sensor}_target_mask": mask, f"{sensor}_gaps": gaps}


def bench(sensor: str, size: str, batch: int, repeats: int) -> dict[str, float]:
  config = configs.stage1_config(sensor, size)
  task = tasks.make_task(config)
  tx = optim.make_optimizer(config.optimizer)
  rng = np.random.default_rng(0)
  data = {k: jnp.asarray(v) for k, v in random_batch(sensor, config.model.channels, batch, rng).items()}
  key = jax.random.key(0)
  params = jax.jit(task.init)(key, task.example_batch(batch))
  opt_state = tx.init(params)
  step_fn = jax.jit(functools.partial(trainer.train_step, task, tx, config.optimizer))
  args = (params, opt_state, data, jnp.asarray(100, jnp.int32), jnp.asarray(1.0), key)
  flops = common.compiled_flops(step_fn, *args)
  t = common.time_call(lambda: step_fn(*args), warmup=1, repeats=repeats)
  return {"params": optim.count_params(params), "flops": flops, **t,
          "samples_s": batch / t["median_s"], "flop_s": flops / t["median_s"]}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="", help="config variant: '' (full size), runlocal or test")
  p.add_argument("--sensors", default="s2,s1")
  p.add_argument("--batches", default="16,256")
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  ceiling = common.matmul_ceiling()
  print(f"backend {jax.default_backend()} x{jax.device_count()} | matmul ceiling {ceiling / 1e9:.1f} GFLOP/s"
        f" (2048^2 float32)")
  print(f"{'sensor':6} {'size':8} {'batch':>5} {'params':>9} {'s/step':>8} {'samples/s':>10} "
        f"{'GFLOP/step':>10} {'GFLOP/s':>8} {'of ceil':>7}")
  for sensor in a.sensors.split(","):
    for b in map(int, a.batches.split(",")):
      r = bench(sensor, a.size, b, a.repeats)
      print(f"{sensor:6} {a.size or 'full':8} {b:5d} {r['params']:9d} {r['median_s']:8.3f} "
            f"{r['samples_s']:10.2f} {r['flops'] / 1e9:10.1f} {r['flop_s'] / 1e9:8.1f} "
            f"{r['flop_s'] / ceiling:7.1%}", flush=True)
  print(f"peak RSS {common.peak_rss_gb():.1f} GB")


if __name__ == "__main__":
  main()
