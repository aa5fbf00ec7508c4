"""Named presets as plain functions returning a Config (no registries)."""

from __future__ import annotations

from bigbatch.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def default_lm() -> Config:
    """The embedded default of `bigbatch train`: a small GPT-style LM with a 4k BPE vocabulary on the running
    interpreter's standard library, 280 s of training (about 5 minutes in all) on 2 CPU cores, the schedule
    decaying over the last 20% of the time. Measured against bytes (docs/quality.md): BPE sees ~3x more text
    per token at about the same cost per token, 1.56 vs 1.90 bits/byte in the same time."""
    return Config(
        task="lm",
        model=ModelConfig(d_model=192, n_heads=3, n_layers=4, max_len=256, pos="learned", dropout=0.0),
        data=DataConfig(source="builtin:python-stdlib", tokenizer="bpe", vocab_size=4096, seq_len=256),
        train=TrainConfig(max_time_s=280.0, global_batch_size=16, eval_every=0, eval_every_s=60.0, eval_batches=8,
                          log_every=10, seed=0, sample_prompt="def "),
        optim=OptimConfig(name="adamw", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95),
                          warmup_fraction=0.08, schedule="wsd", min_lr_ratio=0.0),
    )


PRESETS = {"default": default_lm}
