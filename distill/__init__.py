"""Data, losses, metrics and training loops for distilling learned ISPs.

Nothing is imported here, so ``distill.data`` (the camera-file readers ``ispdc process`` uses) loads
without torch; the modules that import torchmetrics import ``teachers.torch_compat`` first.
"""
