class TensorpressError(Exception):
    """User-facing error: a one-line message naming the culprit."""
