r"""Stage 1, Sentinel-1 context-aware autoencoder (VV/VH, bottleneck 2, 7 reduced tokens).

  python -m earthrep.train --config experiments/s1_ae.py:runlocal --workdir runs/s1_ae \
      --config.data_dir=demo/shards/s1

Default: the reference's full-size model (3,712,061 params) and schedule for GPU/TPU; the released S1
AE reached a validation centre MAE of 6.460e-4. `runlocal` (the S2 recipe, 1000 steps at batch 16,
about 7 minutes on a 2-core CPU) brings the validation centre MAE on the seed-0 demo region from 0.54 at
step 0 to 0.054 (best, step 300; it stays at 0.064-0.082 afterwards; test 0.075; the speckle's noise floor
of the held-out cubes is 0.028): S1 gains nothing from more steps here. `test` is tiny.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s1", arg)
