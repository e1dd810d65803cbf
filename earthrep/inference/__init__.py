"""Inference from trained fusion models: the embedding engines (naive reference path and fast path), the
any-day API and the feature-cube writer behind `python -m earthrep.embed`."""
