"""Training: experiment configs, the stage objectives (losses), tasks (a model plus its objective), the
optimiser and learning-rate logic, and the trainer `train_and_evaluate` behind `python -m earthrep.train`."""
