"""Shared pieces of the experiment configs (`experiments/*.py` call these).

Variants: `""` (default) = the reference's full-size models and hyper-parameters (section f of
ARCHITECTURE.md), meant for GPU/TPU; `runlocal` = narrower models and a short schedule that train on
a 2-core CPU in minutes on the demo shards; `test` = tiny shapes for the test suite.
"""
from __future__ import annotations

import ml_collections

from earthrep import sensors

# Full-size widths of the reference, and the shrunken ones of the CPU variants.
WIDTHS = {
    "": dict(widths=(149, 128, 64), d_model=256, token_dim=16, heads=8, ffn=8, layers=3),
    "runlocal": dict(widths=(32, 32, 32), d_model=64, token_dim=16, heads=4, ffn=8, layers=2),
    "test": dict(widths=(8, 8, 8), d_model=32, token_dim=8, heads=2, ffn=8, layers=1),
}


def variant_of(arg: str | None) -> str:
  arg = (arg or "").strip()
  if arg not in WIDTHS:
    raise ValueError(f"unknown config variant {arg!r}; expected one of {sorted(WIDTHS)}")
  return arg


def optimizer_config(stage: str, variant: str) -> ml_collections.ConfigDict:
  """AdamW 1e-4, wd 1.5e-4, clip 1.0, LinearLR warm-up and ReduceLROnPlateau (section f)."""
  opt = ml_collections.ConfigDict(dict(
      lr=1e-4, weight_decay=1.5e-4, clip_norm=1.0, warmup_start_factor=1e-3,
      warmup_steps=35_000 if stage == "stage1" else 30_000,
      plateau_factor=0.35 if stage == "stage1" else 0.3,
      plateau_patience=5 if stage == "stage1" else 9,
      min_lr=1.5e-6 if stage == "stage1" else 3.5e-7,
      plateau_threshold=1.5e-6 if stage == "stage1" else 3.5e-7,
      early_stopping_patience=16,
      # after the warm-up: "none" (the reference) or "cosine" to final_lr_factor * lr at decay_steps
      decay="none", decay_steps=0, final_lr_factor=0.0,
      # > 0: validate and keep as best the params' exponential moving average (not the reference)
      ema_decay=0.0))
  if variant == "runlocal":
    # short CPU schedule (the demo's recipe, see `stage1_config`): higher lr, short warm-up, then half a
    # cosine to 2 % of it at the last step (`decay_steps` is set to the variant's total_steps below)
    opt.update(lr=2e-3 if stage == "stage1" else 1e-3, warmup_steps=100 if stage == "stage1" else 50,
               plateau_patience=3, early_stopping_patience=0, decay="cosine", final_lr_factor=0.02)
  elif variant == "test":
    opt.update(lr=1e-3, warmup_steps=2, early_stopping_patience=0)
  return opt


def stage1_config(sensor: str, arg: str | None) -> ml_collections.ConfigDict:
  variant = variant_of(arg)
  c = ml_collections.ConfigDict()
  c.task = "autoencoder"
  c.sensor = sensor
  c.data_dir = f"demo/shards/{sensor}"
  c.model = ml_collections.ConfigDict(dict(
      **sensors.get(sensor).stage1, **WIDTHS[variant], max_position=200, reference_batch_mixing=False,
      # NaN fill of the inputs: "frame" (default) fills a crop from its own frame, so the feature-cube fast
      # path can reuse every crop's feature; "window" is the reference's window mean (data.preprocess.fill_patches).
      fill="frame", centre_path=False))
  # Stage-1 objective of the released code: MAE only (section d); default mode fixes the centre metric.
  c.loss = ml_collections.ConfigDict(dict(**sensors.STAGE1_LOSS, reference=False))
  c.optimizer = optimizer_config("stage1", variant)
  # Loader options (`earthrep.data.make_loader`): with hide_centre_prob > 0 the centre frame of that share of
  # the patches is hidden from the input and still scored, so the model learns to fill a missing day.
  c.data_kwargs = ml_collections.ConfigDict(dict(hide_centre_prob=0.0, hide_sensor=sensor))
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 500
  c.total_steps = 0          # 0: num_epochs * (train records // batch_size)
  c.eval_every_steps = 0     # 0: once per epoch, as the reference
  c.checkpoint_every_steps = 0  # 0: at every evaluation
  c.log_every_steps = 50
  c.keep_best = 5
  c.seed = 42
  c.worker_count = 0
  c.num_devices = 0          # 0: all devices
  c.async_checkpointing = True
  c.eval_at_start = True     # validation at step 0 gives the baseline the demo compares against
  if variant == "runlocal":
    # The demo's recipe (seed-0 demo, validation centre MAE; benchmarks/results/s2_recipe.md has every run).
    # S2: batch 32 at lr 1e-3, a 100-step warm-up, a cosine to 2 % at step 1400, no plateau rule, and the
    # params' moving average (decay 0.99) validated and kept: 0.0127 (seed 42) and 0.0143 (seed 1), test
    # cube 0.0169 / 0.0182; about 15 minutes on 2 cores. Why: the earlier recipe (batch 16, lr 2e-3, 2500
    # steps) reached 0.0116 once and then, in two runs on another machine, sat at 0.035-0.045 for 2000
    # steps: a code that has learned nothing of its patch (the training split's band means score 0.0435;
    # the reconstructions barely varied from patch to patch, and the visible and SWIR bands not at all).
    # At lr 2e-3 and batch 16 the same model went that way with per-band input scaling and with a dense
    # whole-patch MAE term too (500-step probes); half the lr at twice the batch left it by step 400 on
    # both seeds, and the moving average is 0.0163 where the params are 0.0222 at step 600 (equal at the
    # end, where the cosine has brought the lr down). The model under-fits (training loss ~0.009 at step
    # 1100): steps are what it lacks, and the demo's budget allows no more (d_model 128 gives the same
    # curve, 0.0127 at 1400). Earlier findings, same
    # measure: no dropout (the reference's 0.07 / 0.1 / 0.25 learn more slowly: 0.039 against 0.020 on a
    # fixed batch after 100 steps); a 10x weight on the centre term reached 0.0180 at 900 steps and a LESS
    # pixel-specific code (benchmarks/embedding_locality.py), so the centre weight stays 1.
    # S2 also takes the centre path (`TransformerAE.centre_path`): the 4x4 token grid blends the centre
    # pixel with its neighbours before the code, so the code followed its ring of neighbours more than the
    # pixel itself (a ring-1 change moved it 0.40 of the distance between two patches, the centre 0.15);
    # with the path the centre moves it 0.81 and ring 1 0.21, and the S2 patches cut at 3 px reach 0.0113
    # validation, 0.0071 test (0.0132 / 0.0103 without).
    # S1 keeps batch 16, lr 2e-3 and 400 steps (0.0465; it is best early: 1000 steps were best at step 300,
    # 0.054); the S2 recipe gives it 0.0563 (best at step 100), the centre path 0.0581.
    c.model.update(enc_dropout=0.0, dec_dropout=0.0, transformer_dropout=0.0)
    c.batch_size = 16
    c.total_steps = 400
    if sensor == "s2":   # the cosine alone sets the lr, and the params' moving average is validated
      c.batch_size, c.total_steps = 32, 1400
      c.optimizer.update(lr=1e-3, plateau_factor=1.0, ema_decay=0.99)
      c.model.centre_path = True
      # A quarter of the patches have their centre frame hidden (and still scored), so the code learns to
      # fill a missing day, which the frozen encoder must do for the fusion's any-day answers: hidden-centre
      # validation 0.0334 -> 0.0229 (test cube 0.0203 -> 0.0096), visible 0.0113 -> 0.0141 (test 0.0071 ->
      # 0.0080); the fusion's any-day MAE on crop falls 1.85x -> 1.20x linear interpolation at 30-day gaps.
      c.data_kwargs.hide_centre_prob = 0.25
    c.eval_every_steps = 100
    c.log_every_steps = 50
    c.keep_best = 2
    c.optimizer.decay_steps = c.total_steps
  elif variant == "test":
    c.batch_size = 8
    c.eval_batch_size = 16
    c.total_steps = 6
    c.eval_every_steps = 3
    c.log_every_steps = 1
    c.keep_best = 1
  return c


FUSION_SIZES = {
    "": dict(bottleneck=7, d_model=128, heads=4, ffn=256, layers=2, max_position=350, dropout=0.1),
    "runlocal": dict(bottleneck=7, d_model=128, heads=4, ffn=256, layers=2, max_position=350, dropout=0.1),
    "test": dict(bottleneck=7, d_model=32, heads=2, ffn=32, layers=1, max_position=350, dropout=0.1),
}


def fusion_config(arg: str | None, sensor_names: tuple[str, ...] = ("s1", "s2")
                  ) -> ml_collections.ConfigDict:
  """Stage 2 on the fused shards; the autoencoder sizes come from the stage-1 checkpoints."""
  variant = variant_of(arg)
  c = stage1_config("s2", arg)   # same schedule fields; overridden below where stage 2 differs
  del c.sensor
  c.task = "fusion"
  c.sensors = sensor_names
  for s in sensor_names:
    setattr(c, f"{s}_workdir", f"demo/runs/{s}_ae")
  c.data_dir = "demo/shards/fused"
  c.freeze_encoders = True       # the paper: only the fusion layers are trained (released code: False)
  # earthrep's any-day options (FusionModel; benchmarks/results/anyday_gaps.md), off in every variant;
  # centre_anchor needs centre_head
  c.model = ml_collections.ConfigDict(FUSION_SIZES[variant] | dict(
      centre_head=False, pixel_token=False, centre_anchor=False))
  # Per-sensor weights: earthrep.sensors; centre_weight scales the centre heads' term (model.centre_head).
  c.loss = ml_collections.ConfigDict(dict(reference=False, centre_weight=1.0))
  c.optimizer = optimizer_config("fusion", variant)
  # Any-day training: hide the centre S2 frame of this fraction of samples from the input while keeping
  # it as the loss target (0 reproduces the reference's training).
  c.data_kwargs = ml_collections.ConfigDict(dict(hide_centre_prob=0.25, hide_sensor="s2"))
  c.keep_best = 1                # the reference keeps the single best fusion checkpoint
  if variant == "runlocal":
    c.batch_size = 16
    c.total_steps = 700
    c.eval_every_steps = 50
    c.optimizer.decay_steps = c.total_steps
  return c
