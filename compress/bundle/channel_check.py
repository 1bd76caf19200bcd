"""Whether the card's ``input.channel_order`` is the order the model was fed when its golden data were made.

The golden vectors reproduce whatever the card *calls* the channels, so the order needs checks of its own:

1. it is a permutation of B, Gb, R, Gr;
2. it equals ``golden.channel_order``, the order ``write_bundle`` recorded beside the golden data;
3. when the golden input is image data, the two channels the card names green are the two whose means
   are most alike: Gb and Gr sample one colour at neighbouring sites, so their means agree to a few
   tenths of a percent, while red and blue differ from green (and from each other) by tens of percent
   in any RAW before white balance.  The pair must stand out (its relative difference under a quarter
   of the next pair's, which must exceed 5 %); on noise (a synthetic golden input) none does and the
   check says it cannot confirm.  Red and blue cannot be told apart from the input alone.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from distill.data.bayer import PACKED_ORDER

CLEAR_FACTOR = 0.25  # the greens' mean difference must be under a quarter of the next pair's
DISTINCT = 0.05  # ... and the next pair's must exceed 5 %: on noise every channel has the same mean


def green_pair(golden_input: np.ndarray) -> tuple[int, int] | None:
    """Channel indices of the two channels with the most alike means in an NHWC packed input, or None
    when no pair stands out (noise, a flat image)."""
    if golden_input.shape[-1] != 4:
        return None
    means = np.asarray(golden_input, dtype=np.float64).reshape(-1, 4).mean(axis=0)
    if np.any(means <= 0):
        return None
    spread = {pair: float(abs(means[pair[0]] - means[pair[1]]) / (means[pair[0]] + means[pair[1]]))
              for pair in combinations(range(4), 2)}
    best, second = sorted(spread, key=spread.__getitem__)[:2]
    return best if spread[second] > DISTINCT and spread[best] < CLEAR_FACTOR * spread[second] else None


def check_channel_order(card: dict[str, Any], bundle: Path) -> list[tuple[bool, str]]:
    """(passed, line) for each check above; a failed line names ``input.channel_order``."""
    order = (card.get("input") or {}).get("channel_order")
    if order is None:
        return [(True, "input.channel_order: not in the card (B,Gb,R,Gr assumed; skipped)")]
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(PACKED_ORDER):
        return [(False, f"input.channel_order: card {order}, not a permutation of {', '.join(PACKED_ORDER)}")]
    lines: list[tuple[bool, str]] = []
    made_with = (card.get("golden") or {}).get("channel_order")
    if made_with is not None and list(made_with) != order:
        lines.append((False, f"input.channel_order: card {order}, the golden data were made with {made_with} "
                             f"(golden.channel_order)"))
    try:
        golden = np.load(bundle / "golden_input.npy")
    except (OSError, ValueError):
        return lines  # reported by the golden check
    pair = green_pair(golden) if golden.ndim == 4 else None
    greens = tuple(sorted(i for i, c in enumerate(order) if c in ("Gb", "Gr")))
    if pair is None:
        lines.append((True, f"input.channel_order {','.join(order)}: the golden input is not image data (no green "
                            f"pair stands out), so only the recorded order confirms it"))
    elif pair != greens:
        lines.append((False, f"input.channel_order: card {order} names channels {greens[0]},{greens[1]} green; "
                             f"in the golden input channels {pair[0]},{pair[1]} are the green pair"))
    if not any(not ok for ok, _ in lines) and pair is not None:
        lines.append((True, f"input.channel_order {','.join(order)}: the greens are where the golden input's "
                            f"green pair is"))
    return lines
