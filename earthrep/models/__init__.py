"""The models as Flax Linen modules used as pure functions: building blocks, the per-sensor context-aware
autoencoder, the sensor fusion model, crop sharing for the feature-cube fast path and param shapes.
Imports nothing from earthrep outside `models/` but `earthrep.schema`."""
