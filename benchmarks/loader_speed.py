r"""Input-pipeline throughput: samples/s of `earthrep.data.make_loader` for several Grain worker counts.

  python benchmarks/loader_speed.py                          # builds demo shards in a temp dir
  python benchmarks/loader_speed.py --data_dir demo/shards/fused --batch 64 --batches 200

For each worker count it builds a fresh loader (seeded shuffle, repeat forever), pulls `--warmup`
batches (process start-up, first reads), then times `--batches` batches and prints one table row.
The numbers are host-side only (decode, fill, masks, gaps); no device transfer.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from earthrep import data  # noqa: E402


def build_demo(out: Path, modality: str, sites: int, size: int, seed: int) -> Path:
  from data_prep import build_shards, demo_world
  demo_world.make_world(out / "world", seed=seed, size=size, sites=sites)
  shards = out / "shards" / modality
  build_shards.build_shards(out / "world" / "cubes", shards, modality, seed=seed)
  return shards


def bench(data_dir: Path, workers: int, batch: int, batches: int, warmup: int, seed: int) -> dict[str, float]:
  loader = data.make_loader(data_dir, "train", global_batch_size=batch, seed=seed, worker_count=workers,
                            shard_index=0, shard_count=1)
  it = iter(loader)
  t0 = time.perf_counter()
  for _ in range(warmup):
    next(it)
  t1 = time.perf_counter()
  for _ in range(batches):
    next(it)
  t2 = time.perf_counter()
  del it
  return {"startup_s": t1 - t0, "s_per_batch": (t2 - t1) / batches, "samples_s": batch * batches / (t2 - t1)}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data_dir", default=None, help="shard directory; default: build demo shards")
  p.add_argument("--modality", default="fused", help="for the demo shards")
  p.add_argument("--sites", type=int, default=4, help="demo sites")
  p.add_argument("--size", type=int, default=90, help="demo cube size in pixels")
  p.add_argument("--workers", default="0,1,2")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=100)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  with tempfile.TemporaryDirectory(prefix="loader_speed_") as tmp:
    data_dir = Path(a.data_dir) if a.data_dir else build_demo(Path(tmp), a.modality, a.sites, a.size, a.seed)
    shards = data.open_shards(data_dir, "train")
    print(f"{data_dir}: {shards.modality}, {shards.count} train records in {len(shards.paths)} files, "
          f"{shards.spec.nbytes / 1024:.0f} KiB/record | batch {a.batch}, {a.batches} timed batches "
          f"after {a.warmup} warm-up, cpu count {os.cpu_count()}")
    print(f"{'workers':>7} {'start-up s':>10} {'ms/batch':>9} {'samples/s':>10}")
    for workers in map(int, a.workers.split(",")):
      r = bench(data_dir, workers, a.batch, a.batches, a.warmup, a.seed)
      print(f"{workers:7d} {r['startup_s']:10.2f} {r['s_per_batch'] * 1e3:9.1f} {r['samples_s']:10.0f}",
            flush=True)


if __name__ == "__main__":
  main()
