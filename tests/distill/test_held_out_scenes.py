"""The fixed held-out scene set: 5 real photos from installed packages x 3 camera/exposure variants."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distill.data import scenes
from distill.data.embedded import EVAL_MULTIPLE, TRAIN_PHOTOS, load_embedded
from distill.data.errors import DataError
from distill.data.scenes import HELD_OUT_SCENES, load_held_out_scenes, scene_cameras


@pytest.fixture(scope="module")
def pairs() -> list:
    return load_held_out_scenes(seed=0)


def test_fifteen_whole_images_in_a_fixed_order(pairs: list) -> None:
    assert list(HELD_OUT_SCENES) == ["chelsea", "rocket", "china", "flower", "grace_hopper"]
    assert [p.name for p in pairs] == [f"{n}#cam{k}" for n in HELD_OUT_SCENES for k in (1, 2, 3)]
    for p in pairs:
        _, h, w = p.raw.shape
        assert p.rgb.shape == (3, 2 * h, 2 * w)
        assert (2 * h) % EVAL_MULTIPLE == 0 and (2 * w) % EVAL_MULTIPLE == 0
        assert max(2 * h, 2 * w) <= 384 and max(2 * h, 2 * w) > 384 - EVAL_MULTIPLE  # whole, not a centre crop
        for a in (p.raw, p.rgb):
            assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0


def test_no_training_photo_and_variants_differ(pairs: list) -> None:
    assert not {p.name.split("#")[0] for p in pairs} & set(TRAIN_PHOTOS)
    by_scene: dict[str, list] = {}
    for p in pairs:
        by_scene.setdefault(p.name.split("#")[0], []).append(p)
    for variants in by_scene.values():
        assert all(np.array_equal(variants[0].rgb, v.rgb) for v in variants)
        raws = [v.raw for v in variants]
        assert not any(np.allclose(raws[i], raws[j]) for i in range(3) for j in range(i + 1, 3))
    cams = scene_cameras(0)
    assert len({c.rgb_to_cam for c in cams}) == 3  # three camera models


def test_deterministic_per_seed(pairs: list) -> None:
    again = load_held_out_scenes(seed=0)
    other = load_held_out_scenes(seed=1)
    for a, b, c in zip(pairs, again, other, strict=True):
        assert np.array_equal(a.raw, b.raw) and np.array_equal(a.rgb, b.rgb)
        assert np.array_equal(a.rgb, c.rgb) and not np.allclose(a.raw, c.raw)


def test_one_sensor_keeps_the_colour_matrix_and_variants_count() -> None:
    sensor = scene_cameras(5)[0]
    one = load_held_out_scenes(seed=0, max_side=128, variants=2, sensor=sensor)
    assert [p.name for p in one][:2] == ["chelsea#cam1", "chelsea#cam2"] and len(one) == 10


def test_load_embedded_is_unchanged_by_the_scene_set() -> None:
    # the eval split still holds its two photos at their old size (the demo's numbers depend on it)
    ev = load_embedded("eval", seed=0)
    assert [p.name for p in ev] == ["chelsea", "rocket"]
    assert ev[0].raw.shape == (4, 80, 128)


def test_a_missing_package_names_the_file_and_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"china\.jpg from the scikit-learn package"):
        scenes.scene_path("china")
    monkeypatch.setattr(scenes, "skimage_data_dir", lambda: Path("/nonexistent/skimage/data"))
    with pytest.raises(DataError, match=r"rocket\.jpg from the scikit-image package"):
        scenes.scene_path("rocket")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(DataError, match="non-negative seed"):
        load_held_out_scenes(seed=-1)
    with pytest.raises(DataError, match="at least one variant"):
        load_held_out_scenes(variants=0)
