"""The one exception type every weight reader and key map raises."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file/key/shapes."""
