"""Large ISP networks that supervise students. Build them by name with ``create_teacher``."""
import teachers.torch_compat  # noqa: F401  (first: torchvision on CPU torch, see that module)
from teachers import aaunet as _aaunet  # noqa: F401
from teachers import punet as _punet  # noqa: F401  (registers its models)
from teachers import pynet as _pynet  # noqa: F401  (registers its models)
from teachers.registry import TEACHERS


def create_teacher(name: str, **config: object):
    """Build a registered teacher, e.g. ``create_teacher("punet", base_width=8)``."""
    return TEACHERS.create(name, **config)


def list_teachers() -> list[str]:
    return TEACHERS.names()
