"""The one exception type every weight reader and key map raises."""
from pixart_jax.files import FileError


class WeightsError(FileError):
    """A weight file that cannot be read or does not fit the model; the message names the file/key/shapes."""
