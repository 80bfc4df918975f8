"""The package's one exception type."""

from __future__ import annotations


class CryoNBError(Exception):
    """Bad input or a failed step; the message names the file or parameter and what was expected."""
