"""The fixed held-out scene set: real photographs shipped inside installed packages, unprocessed to RAW
with several camera models and exposures each, scored as whole images.

The set is fixed: changing it changes every benchmark that uses it.  It is, in this order (the order
seeds the random draws):

====================  ==============  ===============================================
scene                 package         file inside the package
====================  ==============  ===============================================
``chelsea``           scikit-image    ``skimage/data/chelsea.png``
``rocket``            scikit-image    ``skimage/data/rocket.jpg``
``china``             scikit-learn    ``sklearn/datasets/images/china.jpg``
``flower``            scikit-learn    ``sklearn/datasets/images/flower.jpg``
``grace_hopper``      matplotlib      ``matplotlib/mpl-data/sample_data/grace_hopper.jpg``
====================  ==============  ===============================================

None of them is a training photo (``distill.data.embedded.TRAIN_PHOTOS``); ``chelsea`` and ``rocket`` are
the two held-out photos of ``load_embedded("eval")``.  Files are read straight from the installed packages'
folders (found with ``importlib.util.find_spec``, which imports nothing), never through a fetcher, so
nothing reaches for the network.

Each photo is rendered ``variants`` times (default 3), variant ``k`` as ``<scene>#cam<k+1>``: camera
model ``cam<k>`` is one colour matrix drawn once per seed and shared by every scene (so a per-camera
breakdown means something), and each (scene, variant) gets its own white balance, exposure and noise
draw.  Everything is a pure function of ``(seed, scene index, variant index)``, like ``load_embedded``.
Images are whole: area-downscaled so the long side is at most ``max_side``, then cut only to a multiple
of ``EVAL_MULTIPLE`` RGB pixels (at most 31 pixels per side lost).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from distill.data.embedded import EVAL_MULTIPLE, TRAIN_PHOTOS, RawRgbPair, _target_size, make_pair, skimage_data_dir
from distill.data.errors import DataError
from distill.data.unprocess import CameraModel

# scene -> (import name of the package, its name on PyPI, path of the file inside the package folder)
HELD_OUT_SCENES: dict[str, tuple[str, str, str]] = {
    "chelsea": ("skimage", "scikit-image", "data/chelsea.png"),
    "rocket": ("skimage", "scikit-image", "data/rocket.jpg"),
    "china": ("sklearn", "scikit-learn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "scikit-learn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
SCENE_VARIANTS = 3
SCENES_STREAM = 20_000  # rng stream of the held-out scenes, apart from load_embedded's streams
assert not set(HELD_OUT_SCENES) & set(TRAIN_PHOTOS), "a training photo in the held-out scene set"


def scene_path(name: str) -> Path:
    """Where the installed package keeps scene ``name``; DataError naming file and package if absent."""
    package, dist, relative = HELD_OUT_SCENES[name]
    if package == "skimage":
        folder: Path | None = skimage_data_dir().parent
    else:
        spec = importlib.util.find_spec(package)
        locations = spec.submodule_search_locations if spec is not None else None
        folder = Path(list(locations)[0]) if locations else None
    path = folder / relative if folder is not None else Path(package) / relative
    if folder is None or not path.is_file():
        raise DataError(f"held-out scene {name!r} needs {Path(relative).name} from the {dist} package "
                        f"({package}/{relative}); it is not installed ({path})")
    return path


@functools.lru_cache(maxsize=16)
def _scene_photo(name: str, max_side: int | None) -> np.ndarray:
    """Decoded, area-downscaled uint8 ``(H, W, 3)`` scene, cut to ``EVAL_MULTIPLE`` (cached, read-only)."""
    img: Image.Image
    with Image.open(scene_path(name)) as img:
        img = img.convert("RGB")
        (rh, rw), (ch, cw) = _target_size(img.height, img.width, max_side, EVAL_MULTIPLE)
        if ch == 0 or cw == 0:
            raise DataError(f"held-out scene {name!r} at max_side={max_side} is {rh}x{rw} pixels, smaller than "
                            f"the {EVAL_MULTIPLE}-pixel grid; use a larger max_side")
        if (rh, rw) != (img.height, img.width):
            img = img.resize((rw, rh), Image.Resampling.BOX)  # exact area averaging
        top, left = (rh - ch) // 2, (rw - cw) // 2
        array = np.asarray(img)[top : top + ch, left : left + cw].copy()
    array.setflags(write=False)
    return array


def scene_cameras(seed: int = 0, variants: int = SCENE_VARIANTS) -> list[CameraModel]:
    """The ``variants`` camera models (colour matrices) of the set for ``seed``: ``cam1``, ``cam2``, ..."""
    return [CameraModel.sample(np.random.default_rng([seed, SCENES_STREAM, k])) for k in range(variants)]


def load_held_out_scenes(seed: int = 0, max_side: int | None = 384, *, variants: int = SCENE_VARIANTS,
                         pattern: str = "RGGB", sensor: CameraModel | None = None) -> list[RawRgbPair]:
    """RAW/sRGB pairs of the fixed held-out scene set: 5 photos x ``variants`` renderings (15 by default).

    Pair ``<scene>#cam<k>`` is the whole photo unprocessed with camera model ``cam<k>``'s colour matrix and
    a white balance, exposure and noise drawn from ``np.random.default_rng([seed, SCENES_STREAM, i, k])``
    (``i`` the scene's index in ``HELD_OUT_SCENES``).  ``sensor`` keeps one colour matrix for every variant
    (one phone, as in training with ``load_embedded``): then only exposure, white balance and noise vary.
    """
    if seed < 0:
        raise DataError(f"held-out scenes need a non-negative seed; got {seed}")
    if variants < 1:
        raise DataError(f"held-out scenes need at least one variant per photo; got {variants}")
    if max_side is not None and max_side < EVAL_MULTIPLE:
        raise DataError(f"max_side must be at least {EVAL_MULTIPLE} pixels; got {max_side}")
    cameras = [sensor] * variants if sensor is not None else scene_cameras(seed, variants)
    pairs = []
    for i, name in enumerate(HELD_OUT_SCENES):
        srgb = _scene_photo(name, max_side).astype(np.float32) / 255.0
        for k, camera in enumerate(cameras):
            rng = np.random.default_rng([seed, SCENES_STREAM, i, k])
            pairs.append(make_pair(srgb, f"{name}#cam{k + 1}", rng, pattern, sensor=camera))
    return pairs
