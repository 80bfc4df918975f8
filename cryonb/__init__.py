"""cryonb: a reproducible, notebook-first companion to two cryo-ET deep-learning papers.

Gupta et al. 2022 (contrastive self-supervised pre-training of RB3D) and COS-Net
(one-shot classification and segmentation with DuSE attention and a 3-D dense CRF).
"""

from cryonb.errors import CryoNBError

__version__ = "0.1.0"
__all__ = ["CryoNBError", "__version__"]
