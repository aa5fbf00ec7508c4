"""bigbatch: train Transformer models on large datasets with large batches."""

__version__ = "0.1.0"


def load(path):
    """Load a run directory or checkpoint directory -> (model in eval mode, Config)."""
    from bigbatch.train.checkpoint import load_model

    return load_model(path)
