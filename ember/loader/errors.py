"""The one exception type the loaders raise: its message names what is wrong."""


class ModelLoadError(ValueError):
    pass
