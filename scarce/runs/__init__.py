"""Runs: one training run end to end for each model family, upstream pretraining, the model card."""
