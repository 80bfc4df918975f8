"""Contrast polarity: which way protein goes in a volume, and the one conversion between the two.

The models' convention is :data:`MODEL_POLARITY` = "dark": protein darker than the surrounding ice,
i.e. a noise-free subtomogram correlates *negatively* with the molecule's potential. That is what a
tomogram reconstructed from the raw tilts shows (IMOD, AreTomo, Warp, and phase flipping keeps it),
because the weak-phase image is I/I₀ − 1 = −2 φ ⊛ CTF with CTF > 0 at low frequency. "bright" is
the negative (protein white, as after an "invert contrast" step). Data sets record theirs in
``recipe.json`` and ``meta.csv`` (column ``polarity``).
"""

from __future__ import annotations

import numpy as np
import torch

from cryonb.errors import CryoNBError
from cryonb.simulate.config import POLARITIES

__all__ = ["MODEL_POLARITY", "POLARITIES", "check_polarity", "convert_polarity"]

#: The polarity the simulated data sets (and hence the models trained on them) use by default.
MODEL_POLARITY = "dark"


def check_polarity(value: str, name: str = "polarity") -> str:
    """Return ``value`` if it is 'dark' or 'bright'; raise a CryoNBError naming ``name`` otherwise."""
    if value not in POLARITIES:
        raise CryoNBError(f"{name}={value!r}: expected 'dark' (protein darker than ice, as reconstructed from raw tilts) or 'bright'")
    return value


def convert_polarity(volume: np.ndarray | torch.Tensor, from_polarity: str, to_polarity: str = MODEL_POLARITY) -> np.ndarray | torch.Tensor:
    """``volume`` in ``to_polarity``: unchanged if the two agree, negated otherwise.

    Parameters
    ----------
    volume : (..., z, y, x) array or tensor, any units (a tomogram, a stack of subtomograms).
    from_polarity : what ``volume`` shows, 'dark' or 'bright'.
    to_polarity : what is wanted (default: the models' 'dark').

    Returns
    -------
    The same type and shape. Negation (not 'max − value') so that z-scoring before or after gives the
    same result and a zero-mean volume stays zero-mean.
    """
    check_polarity(from_polarity, "from_polarity")
    check_polarity(to_polarity, "to_polarity")
    return volume if from_polarity == to_polarity else -volume
