"""The one error type of :mod:`weights_import`."""


class WeightsError(ValueError):
    """A weights file or mapping that cannot be loaded into a model.

    The message is one line naming the file (or ``state dict``), the layer,
    what was expected and what was found. The model is untouched when it is raised.
    """
