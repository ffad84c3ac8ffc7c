class TensorpressError(Exception):
    """User-facing error: a one-line message naming the culprit."""


class TensorpressWarning(UserWarning):
    """Something odd but harmless in the user's input (e.g. tensors no module uses); the CLI prints
    it as one `warning: ...` line."""
