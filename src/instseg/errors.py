"""Errors that reach the user as one clear line, naming the file and the problem."""

from __future__ import annotations


class InstsegError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class DataError(InstsegError):
    """Bad input data: a missing or corrupt image, a malformed annotation file or record."""


class CheckpointError(InstsegError):
    """A checkpoint that is missing, incomplete or not an instseg checkpoint."""


class TrainingDiverged(InstsegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class PromptError(InstsegError):
    """A prompt the promptable model cannot take: empty, outside the image, or of the wrong shape."""
