"""bigbatch: train Transformer models on large datasets with large batches."""

__version__ = "0.1.0"


def load(path, checkpoint: str = "best"):
    """Load a run directory or checkpoint directory -> (model in eval mode, Config).

    In a run directory ``checkpoint`` picks best (by the validation metric; latest where none is marked),
    latest, or a checkpoint's name such as step_00001000."""
    from bigbatch.train.checkpoint import load_model

    return load_model(path, checkpoint=checkpoint)
