r"""Stage 2: fusion of the frozen S1 and S2 autoencoders into one 7-d embedding (any-day capable).

  python -m earthrep.train --config experiments/fusion.py:runlocal --workdir runs/fusion \
      --config.s1_workdir=runs/s1_ae --config.s2_workdir=runs/s2_ae --config.data_dir=demo/shards/fused

The stage-1 autoencoders are rebuilt from the `model_config.json` of their workdirs (or converted
checkpoints) and restored from their best checkpoints; they stay frozen unless
`--config.freeze_encoders=False` (what the released scripts do). A quarter of the training samples have
their centre S2 frame hidden from the input (`data_kwargs.hide_centre_prob`), so the model learns to
answer for days without a clear S2 observation. Default: the reference's fusion schedule (AdamW 1e-4,
warm-up 30k steps, plateau factor 0.3 / patience 9) for GPU/TPU. `runlocal` trains the fusion layers on
the demo's fused shards (700 steps at batch 16, lr 1e-3 with a cosine decay, about 9 minutes on a 2-core
CPU). Measured by `make demo` on the seed-0 demo region with its `runlocal` stage-1 models (S2 AE with
the centre path, trained with hidden centre frames: 0.0141, 0.0229 hidden; S1 AE 0.0465): the validation
metric (mean of the S1 and S2 centre-pixel MAE, a quarter of the samples hidden) falls from 0.0655 at
step 0 (random heads) to 0.0290 (best, step 600); `earthrep.summarize` gives its validation centre MAE as
S2 0.0156 (0.0230 with the S2 centre frame hidden; the centre pixel linear in time: 0.0156), S1 0.0393
(`benchmarks/results/demo_training.md`). On an S2 AE trained without hidden frames the hidden case was
0.0290: the frozen encoder bounds it (`benchmarks/results/demo_hidden_frames.md`). The fused embedding (7 numbers) is
narrower than the S2 code it must carry (9), and the stage-1 decoders are frozen, so the fusion does not
reconstruct better than the stage-1 models do (`benchmarks/results/demo_evening.md`,
`benchmarks/results/s2_recipe.md`). `test` is tiny. A `_s2only` suffix
(`:runlocal_s2only`) fuses the S2 autoencoder alone: the "without S1" comparison of
`benchmarks/anyday_reconstruction.py`. earthrep's any-day options, off in every variant:
`--config.model.centre_head=True` (the centre pixel answered by a head on the embedding),
`--config.model.pixel_token=True` (each sensor's centre pixel series as one more fuser token), trained on
shards cut with `--gap-share` (gap windows): on the demo they take the any-day MAE from 1.42 / 1.20 / 1.03 /
1.07x linear interpolation on crop (10 / 30 / 60 / 90-day gaps) to 1.31 / 1.14 / 0.97 / 0.97x, and grassland
from 1.71 / 1.20 / 1.10 / 1.08x to 1.53 / 1.09 / 1.11 / 1.10x in the same 700 steps; 2100 steps on gap
shards cut at 3 px (`--config.total_steps=2100 --config.optimizer.decay_steps=2100`, 31 minutes) reach
1.28 / 1.04 / 0.88 / 0.87x and 1.60 / 1.08 / 0.98 / 0.93x (without S1: 1.41 / 1.17 / 1.02 / 1.05x and
1.70 / 1.13 / 0.99 / 1.03x), where a gap-aware pixel regressor reaches
0.45-0.83x (`benchmarks/results/anyday_gaps.md`). `--config.model.centre_anchor=True` (with the centre
head) answers with the linear interpolation of the centre pixel's valid values plus a learned correction:
the D recipe with it is level with interpolation at every gap (0.99-1.03x on crop and grassland) and its
penalty for hiding the day falls from +0.0102 to +0.0009, but the correction it learns does not carry to
the held-out cubes; with every centre of `--gap-share 1.0` shards hidden (4x the informative samples) it
reaches 0.97 / 0.89 / 0.85 / 0.88x on crop and 1.03 / 0.96 / 0.95 / 0.98x on grassland
(`benchmarks/results/anyday_gaps.md`, `benchmarks/anyday_regressor_ablation.py`). The same recipe on shards
cut at 1 px (`--spatial-stride 1`, 38,576 windows) with its centre heads then refitted alone
(`python -m earthrep.refit_heads`, half of the centres hidden) reaches 0.99 / 0.90 / 0.78 / 0.74x on crop
and 1.03 / 0.89 / 0.89 / 0.93x on grassland, with clear days at the noise floor (visible 0.0056).
"""
from earthrep.training import configs


def get_config(arg=None):
  arg = arg or ""
  if arg.endswith("_s2only") or arg == "s2only":
    config = configs.fusion_config(arg.removesuffix("s2only").removesuffix("_"), ("s2",))
    return config
  return configs.fusion_config(arg)
