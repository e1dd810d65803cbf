r"""Stage 1, Sentinel-2 context-aware autoencoder (C 10, bottleneck 9, 6 reduced tokens).

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2

Default: the reference's full-size model (3,726,109 params) and schedule (AdamW 1e-4, warm-up 35k
steps, plateau decay, batch 16, up to 500 epochs) for GPU/TPU; the released S2 AE reached a validation
centre MAE of 3.686e-3 on its 500-cube data set. `runlocal` is the demo's recipe (narrower; earthrep's
centre path, `TransformerAE.centre_path`, which the reference lacks; a quarter of the patches with their
centre frame hidden from the input and still scored, `data_kwargs.hide_centre_prob`; batch 32, lr 1e-3
with a 100-step warm-up and a cosine decay to 2 % over 1400 steps, no dropout, the params' moving average
(decay 0.99) validated and kept; about 15 minutes on a 2-core CPU; `earthrep.training.configs` says why):
on the seed-0 demo region's S2 shards cut at 3 px (`make demo`, 4319 training patches) the best checkpoint
scores a validation centre MAE of 0.0141 (0.0229 with the centre frame hidden) and 0.0080 on the test cube
(0.0096 hidden); the noise floor of the held-out cubes is 0.0054, the mean of the centre pixel's 8
neighbours scores 0.0050 / 0.0060 and the centre pixel linear in time 0.0167 / 0.0069. Without hidden
frames: 0.0113 / 0.0071 visible but 0.0334 / 0.0203 hidden, which the frozen encoder then hands to the
fusion's any-day answers (benchmarks/results/demo_hidden_frames.md). Without the centre path as well:
0.0132 / 0.0103, and a code driven more by the centre's neighbours than by the pixel
(benchmarks/results/s2_recipe.md).
`test` is tiny and used by the test suite.
"""
from earthrep.training import configs


def get_config(arg=None):
  return configs.stage1_config("s2", arg)
