"""Data, losses, metrics and training loops for distilling learned ISPs."""
from teachers import torch_compat  # noqa: F401  (first: torchvision on CPU torch, see that module)
