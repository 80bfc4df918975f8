"""Networks: RB3D (CSSL paper) and COS-Net (one-shot paper, in :mod:`cryonb.models.cosnet`)."""

from cryonb.models.rb3d import RB3D, RB3DConfig, count_parameters

__all__ = ["RB3D", "RB3DConfig", "count_parameters"]
