"""Model inputs: the reference's input rules (`preprocess`), the windows of a site cube (`windows`), and the
training shards (`shards`, the Grain `loader`).

Shards are written by `data_prep.build_shards` with the record layout of `earthrep.schema.RecordSpec`;
see `earthrep.data.loader` for the batch dict keys and the resume contract.
"""
from earthrep.data.loader import eval_batches, finalize_batch, make_loader
from earthrep.data.shards import SPLITS, ShardError, ShardSet, open_shards, shard_filename

__all__ = ["SPLITS", "ShardError", "ShardSet", "eval_batches", "finalize_batch", "make_loader",
           "open_shards", "shard_filename"]
