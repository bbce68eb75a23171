"""Errors of the build: each message says which step failed and why, for a person to act on."""

from __future__ import annotations


class BuildError(RuntimeError):
    """The model repository could not be built; nothing was written to it."""


class ParityError(BuildError):
    """The exported encoder does not reproduce PyTorch at some input length."""
