r"""Stage 1, Sentinel-2 context-aware autoencoder (C 10, bottleneck 9, 6 reduced tokens).

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2

Default: the reference's full-size model (3,726,109 params) and schedule (AdamW 1e-4, warm-up 35k
steps, plateau decay, batch 16, up to 500 epochs) for GPU/TPU; the released S2 AE reached a validation
centre MAE of 3.686e-3 on its 500-cube data set. `runlocal` is the demo's recipe (narrower; batch 32,
lr 1e-3 with a 100-step warm-up and a cosine decay to 2 % over 1400 steps, no dropout, the params' moving
average (decay 0.99) validated and kept; about 15 minutes on a 2-core CPU; `earthrep.training.configs`
says why): on the seed-0 demo region (1503 training patches) the validation centre MAE falls from 0.264
at step 0 to 0.0163 at step 600 and 0.0127 at 1400 (test cube 0.0169; seed 1: 0.0143 and 0.0182; the
noise floor of the held-out cubes is 0.0054, and the mean of the centre pixel's 8 neighbours scores 0.0050
on the validation cube). The previous recipe (batch 16, lr 2e-3, 2500 steps) reached 0.0116 once and
0.0256 / 0.0329 in two later runs. `test` is tiny and used by the test suite.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s2", arg)
