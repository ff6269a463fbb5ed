"""The error every module raises for bad or missing input (no third-party imports, so the
workflow's own process can use it)."""


class DatasetError(ValueError):
    """Bad or missing input; the message names the file and the fix."""


class ClipLoadError(RuntimeError):
    """The CLIP weights could not be found or loaded; the message says how to supply them."""
