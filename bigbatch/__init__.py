"""bigbatch: train Transformer models on large datasets with large batches."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("bigbatch")  # pyproject.toml's, as installed: one place to bump
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path that was never pip-installed
    __version__ = "0+unknown"


def load(path, checkpoint: str = "best"):
    """Load a run directory or checkpoint directory -> (model in eval mode, Config).

    In a run directory ``checkpoint`` picks best (by the validation metric; latest where none is marked),
    latest, or a checkpoint's name such as step_00001000."""
    from bigbatch.train.checkpoint import load_model

    return load_model(path, checkpoint=checkpoint)
