"""Each paper's experiment as orchestration over the pure steps, driven by the spec (:mod:`cryonb.spec`).

- :mod:`cryonb.experiments.cssl`: data sets, CSSL pre-training, the fine-tuning sweep, notebook 09's classifier.
- :mod:`cryonb.experiments.cosnet`: data sets, COS-Net training grid, episode evaluation, segmentation and CRF.
"""
