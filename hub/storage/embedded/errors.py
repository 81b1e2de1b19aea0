"""The embedded server's errors: each message says what is wrong and what to do."""

from __future__ import annotations


class EmbeddedError(RuntimeError):
    """The embedded server cannot be used; the message says why and what to do."""


class DataDirInUse(EmbeddedError):
    """Another `hub serve` without a backplane already serves this data directory."""
