"""Training: device selection, the per-task optimisation loop, the train stage."""
