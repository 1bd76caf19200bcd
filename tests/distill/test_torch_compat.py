"""timm (and torchmetrics) import after any of our packages, whatever torchvision build is installed."""
import subprocess
import sys

import pytest


# distill, compress and recipes keep their __init__ free of torch (``ispdc --help`` and ``ispdc process``
# start without it): their torch-using modules bring the shim in (distill.metrics/losses import it first).
@pytest.mark.parametrize("package", ["teachers", "students", "distill.metrics", "distill.losses", "compress.fold",
                                     "recipes.runner"])
def test_timm_imports_after_each_package(package: str) -> None:
    code = (f"import {package}, timm, torchmetrics; from timm.layers.cbam import CbamModule; "
            "print(CbamModule(8).__class__.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "CbamModule"
