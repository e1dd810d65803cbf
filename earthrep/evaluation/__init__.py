"""Downstream evaluation: GPP at flux towers from embeddings and baselines (footprint features, spectral
baselines, regressors, splits and metrics, the report) behind `python -m earthrep.gpp`."""
