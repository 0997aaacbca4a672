"""The base of the errors that stop a training run (exit code 3 from the programs)."""


class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do. Nothing the run had saved is lost."""
