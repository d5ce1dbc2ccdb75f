"""Thin model definitions over fgreid_ops, next to their papers (docs/models.md).

- ``resnet``: ResNet-50 with torchvision's state_dict keys, last-stride option, 5 level outputs.
- ``cuhs``: CUHS (Xu et al., ACM TOMM 2023), its losses and ``parameter_report``.
- ``fg_video``: the fine-grained video model of Yin et al. (IJCV 2020) and the eq. 4 distance.
- ``datasets``, ``transforms``: Market-1501 / DukeMTMC-reID / MSMT17, MARS and FGPR readers,
  a P×K sampler, random erasing and flips (PIL + torch, no torchvision).
- ``python -m python_models.train`` / ``python -m python_models.evaluate``: training with
  CUHS's recipe by default, checkpoints, and evaluation with each dataset's protocol.

Models call the public ``fgreid_ops`` functions; ``with fgreid_ops.use_reference():`` runs a
model on the plain-PyTorch references instead of the kernels.
"""
