"""Ways to run a model: activation checkpointing, compilation (data parallelism comes here too)."""
