r"""Stage 1, Sentinel-2 context-aware autoencoder (C 10, bottleneck 9, 6 reduced tokens).

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2

Default: the reference's full-size model (3,726,109 params) and schedule (AdamW 1e-4, warm-up 35k
steps, plateau decay, batch 16, up to 500 epochs) for GPU/TPU; the released S2 AE reached a validation
centre MAE of 3.686e-3 on its 500-cube data set. `runlocal` is the demo's recipe (narrower; earthrep's
centre path, `TransformerAE.centre_path`, which the reference lacks; batch 32, lr 1e-3 with a 100-step warm-up and a cosine decay to 2 % over 1400 steps, no
dropout, the params' moving average (decay 0.99) validated and kept; about 14 minutes on a 2-core CPU;
`earthrep.training.configs` says why): on the seed-0 demo region's S2 shards cut at 3 px (`make demo`,
4319 training patches) the validation centre MAE falls from 0.262 at step 0 to 0.0176 at step 500 and
0.0113 at 1400, and the test cube reaches 0.0071 (the noise floor of the held-out cubes is 0.0054; the
mean of the centre pixel's 8 neighbours scores 0.0050 / 0.0060). Without the centre path: 0.0132 / 0.0103,
and a code driven more by the centre's neighbours than by the pixel (benchmarks/results/s2_recipe.md).
`test` is tiny and used by the test suite.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s2", arg)
