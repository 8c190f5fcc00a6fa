"""Errors raised by the pure protocol layer."""


class ProtocolError(ValueError):
    """A text frame that is not a valid xiaozhi message; the text says why."""


class FramingError(ValueError):
    """A binary frame that does not match the negotiated framing version."""
