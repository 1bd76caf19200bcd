"""Benchmark scoring: a student with a coarse size contract is scored on the same whole scenes as the rest."""
import pytest
import torch

from benchmarks.scoring import PaddedToMultiple


class _NeedsMultipleOf32(torch.nn.Module):
    """Pointwise RAW -> RGB (1x1 conv + pixel shuffle) that refuses sizes off its contract, as MobileDeepISP does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError("needs multiples of 32")
        return torch.nn.functional.pixel_shuffle(self.conv(x), 2)

    def unchecked(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pixel_shuffle(self.conv(x), 2)


def test_padded_run_returns_the_scene_size_and_its_own_pixels() -> None:
    torch.manual_seed(0)
    model, x = _NeedsMultipleOf32(), torch.rand(1, 4, 40, 72)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(x)
    out = PaddedToMultiple(model, 32)(x)
    assert out.shape == (1, 3, 80, 144)
    torch.testing.assert_close(out, model.unchecked(x))  # a pointwise model: padding changes no kept pixel


def test_sizes_on_the_contract_are_not_padded() -> None:
    model, x = _NeedsMultipleOf32(), torch.rand(1, 4, 32, 64)
    torch.testing.assert_close(PaddedToMultiple(model, 32)(x), model(x))
