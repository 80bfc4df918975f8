"""The package's one exception type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


class CryoNBError(Exception):
    """Bad input or a failed step; the message names the file or parameter and what was expected."""


def reject_unknown_keys(raw: Mapping[str, Any], config_cls: type, what: str) -> None:
    """Raise if ``raw`` has a key that is not a field of the dataclass ``config_cls``.

    Every ``from_dict`` of a config calls this, so a typo in params/*.yaml fails loudly instead of
    being ignored. ``what`` names the config in the message ("CRF", "simulation", ...).
    """
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CryoNBError(f"unknown {what} parameter(s) {unknown}; expected some of {sorted(known)}")
