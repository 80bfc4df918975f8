"""cryonb: a reproducible, notebook-first companion to two cryo-ET deep-learning papers.

Gupta et al. 2022 (contrastive self-supervised pre-training of RB3D) and COS-Net
(one-shot classification and segmentation with DuSE attention and a 3-D dense CRF).
"""

import os as _os
import sys as _sys

# Before anything imports torch: one OpenMP thread per process (parallelism comes from independent models,
# cryonb.train.fit_many), and idle threads sleep instead of spinning; see cryonb.device for why and the numbers.
# OpenMP reads both once, when torch loads (imported first, torch keeps its own; child processes such as notebook
# kernels still inherit these); an explicit setting in the environment wins.
_WAIT_POLICY_BEFORE_TORCH = _os.environ.get("OMP_WAIT_POLICY") if "torch" in _sys.modules else _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_os.environ.setdefault("OMP_NUM_THREADS", _os.environ.get("CRYONB_NUM_THREADS") or "1")

from cryonb.errors import CryoNBError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CryoNBError", "__version__"]
