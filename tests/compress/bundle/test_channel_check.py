"""The channel-order check: the greens the card names must be the golden input's pair of alike channels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from compress.bundle.channel_check import check_channel_order, green_pair

RAW_MEANS = (0.067, 0.147, 0.087, 0.148)  # B, Gb, R, Gr of a dark golden crop from the tiny end-to-end run


def raw_like(seed: int = 0) -> np.ndarray:
    """A packed NHWC input whose channel means are a camera's before white balance, with noise."""
    rng = np.random.default_rng(seed)
    scene = rng.random((1, 32, 32, 1))
    return (scene * np.asarray(RAW_MEANS) * 2 + rng.normal(0, 0.02, (1, 32, 32, 4))).clip(0, 1).astype(np.float32)


def test_green_pair_is_found_on_raw_and_not_on_noise() -> None:
    assert green_pair(raw_like()) == (1, 3)
    assert green_pair(raw_like()[..., [1, 0, 3, 2]]) == (0, 2)
    assert green_pair(np.random.default_rng(0).random((2, 32, 32, 4))) is None  # a synthetic golden input


def test_card_naming_other_channels_green_fails(tmp_path: Path) -> None:
    np.save(tmp_path / "golden_input.npy", raw_like())
    card = {"input": {"channel_order": ["B", "Gb", "R", "Gr"]}, "golden": {"channel_order": ["B", "Gb", "R", "Gr"]}}
    assert all(ok for ok, _ in check_channel_order(card, tmp_path))
    swapped = json.loads(json.dumps(card).replace('"Gb", "R"', '"R", "Gb"'))  # edited in both places
    lines = check_channel_order(swapped, tmp_path)
    assert [line for ok, line in lines if not ok] == [
        "input.channel_order: card ['B', 'R', 'Gb', 'Gr'] names channels 2,3 green; in the golden input channels "
        "1,3 are the green pair"]
    card["input"]["channel_order"] = ["B", "Gb", "R", "X"]
    assert check_channel_order(card, tmp_path)[0][0] is False
