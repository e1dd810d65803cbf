r"""Trains one stage (a stage-1 autoencoder or the stage-2 fusion model); re-running the command resumes.

  python -m earthrep.train --config experiments/s2_ae.py:runlocal --workdir runs/s2_ae \
      --config.data_dir=demo/shards/s2 [--overwrite]

Only flags are parsed here; the training itself is `earthrep.training.trainer.train_and_evaluate`. A
workdir that holds a run with other settings is refused (the reason names the fields) unless `--overwrite`
discards that run. `main(argv)` parses its own flag set, so tests and notebooks can call it repeatedly.
"""
from __future__ import annotations

import logging as pylogging
import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from earthrep import parallel
from earthrep.errors import one_line, run_tool
from earthrep.training import trainer

PROG = "python -m earthrep.train"


class _OwnInfoOnly(pylogging.Filter):
  """Keeps INFO lines of earthrep itself; libraries (Orbax logs every file it writes) only from WARNING."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or "earthrep" in record.pathname


def _flag_error(e: Exception) -> trainer.ConfigError:
  """A flag or config-file error as one line: the flag, then the last line (the cause) of its message."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  if not lines:
    return trainer.ConfigError(f"{type(e).__name__}")
  head, cause = lines[0].rstrip(":"), lines[-1]
  return trainer.ConfigError(head if cause == lines[0] else f"{head}: {cause}")


def parse_flags(argv: Sequence[str]):
  """(config, workdir, overwrite) from the command-line arguments (without the program name)."""
  argv = [PROG, *argv]
  values = flags.FlagValues()
  config = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                           flag_values=values, sys_argv=argv)
  workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumes).",
                                flag_values=values)
  overwrite = flags.DEFINE_boolean("overwrite", False, "Discard the run already in --workdir.",
                                   flag_values=values)
  try:
    rest = values(argv)
    loaded = config.value
    if loaded is not None:
      loaded.to_dict()   # a config file that failed to load raises only when first used
  except flags.Error as e:
    raise _flag_error(e) from None
  except OSError as e:   # the config file is missing or unreadable
    cause = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    raise trainer.ConfigError(f"--config: cannot load the config file ({cause})") from None
  except (AttributeError, KeyError) as e:   # --config.<field> names no field of the config
    raise trainer.ConfigError(f"--config: unknown field {one_line(str(e))} (an override must name a field "
                              "of the config)") from None
  if len(rest) > 1:
    raise trainer.ConfigError(f"unexpected arguments {rest[1:]}: expected only flags (--config, --workdir, ...)")
  missing = [f"--{name}" for name, value in (("config", loaded), ("workdir", workdir.value)) if value is None]
  if missing:
    raise trainer.ConfigError(f"{' and '.join(missing)}: required")
  return loaded, workdir.value, overwrite.value


def _main(argv: Sequence[str] | None) -> int:
  config, workdir, overwrite = parse_flags(sys.argv[1:] if argv is None else argv)
  parallel.maybe_initialize_distributed()
  trainer.train_and_evaluate(config, workdir, overwrite=overwrite)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Parses `argv` (flags only, no program name) and trains; errors end as one line and status 2."""
  return run_tool(_main, argv, PROG)


def _app_main(argv: Sequence[str]) -> None:
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  sys.exit(main(list(argv[1:])))


if __name__ == "__main__":
  # absl parses its own flags (logging); ours are parsed by `main`, with their own flag set.
  app.run(_app_main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
