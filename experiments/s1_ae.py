r"""Stage 1, Sentinel-1 context-aware autoencoder (VV/VH, bottleneck 2, 7 reduced tokens).

  python -m earthrep.train --config experiments/s1_ae.py:runlocal --workdir runs/s1_ae \
      --config.data_dir=demo/shards/s1

Default: the reference's full-size model (3,712,061 params) and schedule for GPU/TPU; the released S1
AE reached a validation centre MAE of 6.460e-4. `runlocal` (400 steps at batch 32, about 10 minutes on a
2-core CPU) brings the validation centre MAE on the seed-0 demo region from 0.66 at step 0 to about 0.067
(0.0678 / 0.0855 / 0.0670 / 0.0668 at steps 100-400; speckle bounds it from below). `test` is tiny.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s1", arg)
