"""Recipe schema, stage runner, MLflow tracking and the ``ispdc`` command line."""
import distill.torch_compat  # noqa: F401  (first: torchvision on CPU torch, see that module)
