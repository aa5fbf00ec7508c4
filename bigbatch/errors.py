"""The one exception type for bad input: the command line prints it as one line, exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, path, data): the message names the thing and what was expected."""


class TrainingError(Exception):
    """Training cannot go on (e.g. the loss stayed non-finite); the last good checkpoint is kept."""
