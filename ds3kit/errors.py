"""Exceptions raised on bad input. The CLI prints their message as one line and exits non-zero."""


class InputError(ValueError):
    """An input file or tensor is unusable; the message names the input and the problem."""


class CheckpointError(InputError):
    """A checkpoint is not a ds3kit checkpoint, is of another architecture, or is unsafe to load."""
