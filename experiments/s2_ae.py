r"""Stage 1, Sentinel-2 context-aware autoencoder (C 10, bottleneck 9, 6 reduced tokens).

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2

Default: the reference's full-size model (3,726,109 params) and schedule (AdamW 1e-4, warm-up 35k
steps, plateau decay, batch 16, up to 500 epochs) for GPU/TPU; the released S2 AE reached a validation
centre MAE of 3.686e-3 on its 500-cube data set. `runlocal` (400 steps at batch 32 on the demo shards, narrower, with lighter dropout; about 10 minutes
on a 2-core CPU) brings the validation centre MAE from 0.30 at step 0 to about 0.034 (measured on the
seed-0 demo region, 1503 training patches: 0.0395 / 0.0421 / 0.0338 / 0.0350 at steps 100-400; the best
checkpoint is kept). `test` is tiny and used by the test suite.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s2", arg)
