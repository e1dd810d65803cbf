r"""Trains one stage (a stage-1 autoencoder or the stage-2 fusion model); re-running the command resumes.

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2

Only flags are parsed here; the training itself is `earthrep.training.trainer.train_and_evaluate`.
"""
from __future__ import annotations

import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from earthrep import parallel
from earthrep.training import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumes).")


class _OwnInfoOnly(pylogging.Filter):
  """Keeps INFO lines of earthrep itself; libraries (Orbax logs every file it writes) only from WARNING."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "earthrep" in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  parallel.maybe_initialize_distributed()
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
