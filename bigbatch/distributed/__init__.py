"""Ways to run a model from outside it: process group, DDP / FSDP2, activation checkpointing, compilation, precision."""
