r"""Is a pixel's embedding driven by its own time series first and its context second?

  python -m benchmarks.embedding_locality --model demo/runs/s2_ae --shards demo/shards/s2 [--split test]
  python -m benchmarks.embedding_locality --model demo/runs/fusion --shards demo/shards/fused

On held-out patches (the shards' `--split`), each patch's code (a stage-1 workdir: z; a fusion workdir: zf)
is compared with the code of the same patch after one change, made with another held-out patch of the
split as donor (same frames kept, so only pixels change):
* `centre`: the centre pixel's whole series (all frames, all bands) replaced by the donor's centre pixel;
* `ring k`: the pixels of Chebyshev ring k around the centre (8k pixels) replaced by the donor's;
* `all context`: every pixel but the centre replaced (the centre series alone stays).
Reported: the median embedding shift ||z' - z|| of each change, divided by the median distance between the
codes of two different held-out patches (so 1.0 = "as far as another patch"). A pixel-specific embedding
moves far when its own series changes and little when one ring of its context does; an embedding that
blurs the context has the reverse. For a fusion model the S2 patch is changed, S1 is left as it is.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from earthrep import data as data_lib
from earthrep import schema
from earthrep.data import preprocess
from earthrep.inference import engine as engine_lib
from earthrep.io import checkpoint
from earthrep.models.autoencoder import ae_from_config

C = schema.CENTRE_PX


def _ring_mask(k: int) -> np.ndarray:
  idx = np.arange(schema.PATCH_PX)
  ring = np.maximum(np.abs(idx[:, None] - C), np.abs(idx[None, :] - C))
  return ring == k


def _load(model_dir: str):
  """-> (encode(raw NaN patches dict) -> codes, sensors, fill)."""
  cfg = checkpoint.read_model_config(model_dir)
  if cfg.get("kind") == "fusion":
    model, params = engine_lib.load_fusion(model_dir)
    fill = model.fill

    @jax.jit
    def encode(p, inputs, offsets):
      return model.apply({"params": p}, inputs, offsets, method=type(model).embed)

    def run(batch):
      inputs = {s: (jnp.asarray(batch[f"{s}_x"]), jnp.asarray(batch[f"{s}_gaps"])) for s in model.sensors}
      offsets = engine_lib.offsets_for(model, np.asarray(batch["delta_days"]).reshape(-1))
      return np.asarray(encode(params, inputs, offsets))
    return run, model.sensors, fill
  model = ae_from_config(cfg["model"])
  sensor = cfg["sensor"]
  params = checkpoint.load_params(model_dir)

  @jax.jit
  def encode(p, x, gaps):
    return model.apply({"params": p}, x, gaps, train=False, method=type(model).encode)
  return (lambda batch: np.asarray(encode(params, jnp.asarray(batch[f"{sensor}_x"]),
                                          jnp.asarray(batch[f"{sensor}_gaps"])))), (sensor,), model.fill


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--model", required=True, help="a stage-1 or fusion workdir (or converted checkpoint)")
  p.add_argument("--shards", required=True, help="shard dir of the model's modality (s2 or fused)")
  p.add_argument("--split", default="test")
  p.add_argument("--patches", type=int, default=256)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also write the figures as JSON here")
  a = p.parse_args(argv)
  run, sensors, fill = _load(a.model)
  changed = "s2" if "s2" in sensors else sensors[0]
  raw = []
  for batch in data_lib.eval_batches(a.shards, a.split, 64, fill=fill):
    n = int(batch["weight"].sum())
    raw.append({k: v[:n] for k, v in batch.items() if k != "weight"})
  raw = {k: np.concatenate([r[k] for r in raw]) for k in raw[0]}
  rng = np.random.default_rng(a.seed)
  pick = rng.choice(len(raw[f"{changed}_x"]), min(a.patches, len(raw[f"{changed}_x"])), replace=False)
  batch = {k: v[pick] for k, v in raw.items()}
  donor = np.roll(np.arange(len(pick)), 1)              # every patch takes another held-out patch's pixels
  x = np.where(batch[f"{changed}_mask"], batch[f"{changed}_x"], np.nan)   # back to the raw NaN patch
  z = run(batch)
  base = float(np.median(np.linalg.norm(z - z[donor], axis=1)))
  changes = {"centre": _ring_mask(0)} | {f"ring {k}": _ring_mask(k) for k in (1, 2, 3, 7)}
  changes["all context"] = ~_ring_mask(0)
  out = {"model": a.model, "split": a.split, "patches": len(pick), "between_patches": base}
  print(f"{a.model}: {len(pick)} held-out patches of {a.shards} ({a.split}); median distance between two "
        f"patches' codes {base:.4g}")
  print("| change | pixels | median shift | / between patches |\n|---|---|---|---|")
  for name, mask in changes.items():
    x2 = np.where(mask[None, None, :, :, None], x[donor], x)
    filled, _ = preprocess.fill_patches(x2, fill)
    shift = np.linalg.norm(run(batch | {f"{changed}_x": filled.astype(np.float32)}) - z, axis=1)
    out[name] = float(np.median(shift)) / base
    print(f"| {name} | {int(mask.sum())} | {np.median(shift):.4g} | {out[name]:.3f} |")
  if a.out:
    from earthrep.io import atomic
    atomic.write_text(a.out, json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
