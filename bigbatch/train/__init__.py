"""The training loop, optimisers and schedules, checkpoints, metrics."""
