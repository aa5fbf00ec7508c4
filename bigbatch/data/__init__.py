"""Sources, builtin corpora, tokenizers, shard preparation, streaming loaders and batching."""
