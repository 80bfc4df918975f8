"""Contrastive self-supervised methods: MoCo, SimCLR, SwAV, on an RB3D encoder."""

from cryonb.ssl.losses import info_nce, nt_xent, sinkhorn, swav_loss
from cryonb.ssl.moco import MoCo
from cryonb.ssl.simclr import SimCLR
from cryonb.ssl.swav import SwAV

METHODS = ("moco", "simclr", "swav")

__all__ = ["METHODS", "MoCo", "SimCLR", "SwAV", "info_nce", "nt_xent", "sinkhorn", "swav_loss"]
