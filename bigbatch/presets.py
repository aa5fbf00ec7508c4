"""Named presets as plain functions returning a Config (no registries)."""

from __future__ import annotations

from bigbatch.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def default_lm() -> Config:
    """The embedded default of `bigbatch train`: a small GPT-style byte-level LM on the running
    interpreter's standard library, about 5 minutes on 2 CPU cores."""
    return Config(
        task="lm",
        model=ModelConfig(d_model=192, n_heads=3, n_layers=4, max_len=256, pos="learned", dropout=0.0),
        data=DataConfig(source="builtin:python-stdlib", tokenizer="byte", seq_len=256),
        train=TrainConfig(max_steps=700, global_batch_size=16, eval_every=100, eval_batches=8,
                          save_every=350, log_every=10, seed=0),
        optim=OptimConfig(name="adamw", lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95),
                          warmup_steps=50, schedule="cosine", min_lr_ratio=0.1),
    )


PRESETS = {"default": default_lm}
