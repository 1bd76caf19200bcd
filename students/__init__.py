"""Small, mobile-friendly ISP networks. Build them by name with ``create_student``."""
import teachers.torch_compat  # noqa: F401  (first: torchvision on CPU torch, see that module)
from students import aaunet_student as _aaunet_student  # noqa: F401  (registers its models)
from students import clean_image as _clean_image  # noqa: F401  (registers the clean-image teachers)
from students import csanet as _csanet  # noqa: F401
from students import lwisp as _lwisp  # noqa: F401
from students import mobile_deepisp as _mobile_deepisp  # noqa: F401
from students import pynetv2 as _pynetv2  # noqa: F401
from students import smallnet as _smallnet  # noqa: F401
from students import smallnet_variants as _smallnet_variants  # noqa: F401
from teachers.registry import STUDENTS


def create_student(name: str, **config: object):
    """Build a registered student, e.g. ``create_student("smallnet", width=16)``."""
    return STUDENTS.create(name, **config)


def list_students() -> list[str]:
    return STUDENTS.names()
