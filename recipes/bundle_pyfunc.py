"""MLflow pyfunc for a hand-off bundle, logged as code ("models from code"): nothing is pickled, so
loading the registered model needs only mlflow, numpy and ai-edge-litert, not this toolkit.

The model runs the bundle's own ``run_model.py`` (the reference runner an app team uses) on packed RAW:
float32 in [0, 1], NHWC ``(N, H, W, 4)`` or NCHW ``(N, 4, H, W)`` (or one frame without N); the output
is sRGB float32 in [0, 1] in the same layout.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    """The bundle's TFLite model behind ``mlflow.pyfunc.load_model(...).predict(raw)``."""

    def load_context(self, context: Any) -> None:
        self.bundle = Path(context.artifacts["bundle"])
        spec = importlib.util.spec_from_file_location("ispdc_bundle_runner", self.bundle / "run_model.py")
        assert spec is not None and spec.loader is not None
        self.runner = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.runner)

    # model_input is left unannotated on purpose: MLflow reads that hint as a signature and wants list[...]
    def predict(self, context, model_input, params=None):  # noqa: ANN001
        x = np.asarray(model_input, dtype=np.float32)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or 4 not in (x.shape[1], x.shape[3]):
            raise ValueError(f"expected packed RAW (N, H, W, 4) or (N, 4, H, W); got shape {x.shape}")
        nchw = x.shape[3] != 4
        nhwc = np.transpose(x, (0, 2, 3, 1)) if nchw else x
        threads = int((params or {}).get("num_threads", 2))
        out = np.concatenate([self.runner.run(self.bundle / "model.tflite", frame[None], threads) for frame in nhwc])
        if nchw:
            out = np.transpose(out, (0, 3, 1, 2))
        return out[0] if single else out


set_model(BundleModel())
