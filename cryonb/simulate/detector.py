"""Detector MTFs on offer: the ideal counting detector and the measured curves ttsim3d ships.

Its own module so that :mod:`cryonb.simulate.config` can validate ``detector_mtf`` without importing the optics
(which import the config): no import cycle.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np
import starfile
import torch

from cryonb.errors import CryoNBError

__all__ = ["IDEAL_DETECTOR", "detector_names", "measured_mtf", "measured_mtf_path"]

IDEAL_DETECTOR = "ideal"
_MTF_COLUMNS = ("rlnResolutionInversePixel", "rlnMtfValue")


@lru_cache(maxsize=1)
def detector_names() -> tuple[str, ...]:
    """Detector MTFs on offer: 'ideal' (pixel-aperture sinc) and the measured curves ttsim3d ships
    (file ``mtf_<name>.star``, e.g. 'k3_standard_300kV_FL2')."""
    return (IDEAL_DETECTOR, *sorted(p.name[4:-5] for p in _mtf_dir().glob("mtf_*.star")))


def _mtf_dir() -> Path:
    return Path(str(importlib.resources.files("ttsim3d"))) / "data"


def measured_mtf_path(name: str) -> Path:
    """The STAR file of a measured detector MTF shipped with ttsim3d."""
    path = _mtf_dir() / f"mtf_{name}.star"
    if not path.is_file():
        raise CryoNBError(f"detector_mtf={name!r}: no measured MTF {path.name}; choose one of {', '.join(detector_names())}")
    return path


@lru_cache(maxsize=16)
def measured_mtf(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency in cycles per detector pixel, 0 to 0.5; MTF) of a measured detector, float64."""
    # starfile directly, as torch-fourier-filter's read_mtf does: importing that package costs ~1 s per process
    table = starfile.read(measured_mtf_path(name))
    freq, mtf = (torch.tensor(table[c].to_numpy(dtype=np.float64)) for c in _MTF_COLUMNS)
    return freq, mtf
