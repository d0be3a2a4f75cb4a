class ConversionError(ValueError):
    """A head, target or GGUF file that cannot be used; the message names the tensor or key."""
