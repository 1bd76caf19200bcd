"""GPU-speed options on the CPU: bf16 autocast and channels_last train, leave the model's structure and
dtype alone, and land close to fp32; fp16 without CUDA is refused; torch.compile trains (slow)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.trainer import TrainSpec, resolve_device, train


class Pairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(2)
        self.raw = torch.rand(8, 4, 8, 8, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.raw[i], self.rgb[i]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))


def _train(**options) -> tuple[nn.Module, float]:
    model = _net()
    spec = TrainSpec(steps=30, lr=1e-2, batch_size=4, losses={"l1": 1.0}, device="cpu", **options)
    return model, train(model, Pairs(), spec, seed=0).final_loss


def test_bf16_autocast_and_channels_last_train_like_fp32() -> None:
    ref, ref_loss = _train()
    fast, fast_loss = _train(amp="bf16", channels_last=True)
    assert [type(m) for m in fast.modules()] == [type(m) for m in ref.modules()]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in fast.parameters())
    assert all(p.is_contiguous() for p in fast.parameters())  # back to the default layout for export
    assert not fast.training
    assert fast_loss == pytest.approx(ref_loss, rel=0.1)
    assert any(not torch.equal(a, b) for a, b in zip(ref.parameters(), fast.parameters()))  # bf16 did run


def test_fp16_needs_cuda_and_cuda_is_never_faked() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: both are allowed")
    with pytest.raises(ValueError, match="fp16' needs a CUDA device"):
        _train(amp="fp16")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_data_loader_workers_give_the_same_batches() -> None:
    a, loss_a = _train(num_workers=0)
    b, loss_b = _train(num_workers=2)
    assert loss_a == loss_b
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.slow
def test_compiled_training_matches_eager() -> None:
    eager, eager_loss = _train()
    compiled, compiled_loss = _train(compile=True)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-3)
    for x, y in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3)
