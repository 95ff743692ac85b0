"""Exceptions raised by dcsam. Every message names the file or setting involved."""


class DcsamError(Exception):
    """Base class of every error dcsam raises on purpose."""


class InputError(DcsamError, ValueError):
    """An image, mask or argument that cannot be used (corrupt file, empty mask, ...)."""


class CheckpointError(DcsamError, RuntimeError):
    """A weight file that is missing, truncated, or does not match the architecture."""
