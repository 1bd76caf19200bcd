"""Make torchvision importable on a CPU-only torch; imported first by every package of this project.

The torchvision wheel the package index offers for torch 2.13.0 (timm needs it) is a CUDA build.
Its C extension does not load against the CPU torch build, and its Python side then fails at import
with ``operator torchvision::nms does not exist`` while registering fake kernels for the ops that
extension should have defined.  Everything that imports torchvision fails with it: timm, and
torchmetrics (which imports it whenever it is installed).  We use neither torchvision's detection
ops nor its kernels, so when (and only when) that failure happens we define the two missing op
schemas and import again; with a matching torchvision, or none, this does nothing.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import torch

_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it unregisters the schemas


def ensure_torchvision_importable() -> None:
    """Import torchvision once, defining its missing op schemas if the first attempt fails."""
    global _library
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]  # half-imported modules of the failed attempt
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_OP_SCHEMAS:
            _library.define(schema)
    importlib.import_module("torchvision")


ensure_torchvision_importable()
