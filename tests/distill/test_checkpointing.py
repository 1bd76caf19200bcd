"""Checkpoints: atomic, weights_only-loadable, and a train() interrupted after a checkpoint resumes to
exactly the weights of an uninterrupted run (deterministic on CPU)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.checkpointing import (
    CheckpointError,
    capture_rng_states,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from distill.trainer import TrainSpec, train


class Pairs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.raw = torch.rand(10, 4, 8, 8, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int):
        flip = self.epoch % 2  # epoch-dependent items: resuming must land in the right epoch
        return self.raw[i].flip(-1) if flip else self.raw[i], self.rgb[i].flip(-1) if flip else self.rgb[i]


class Noisy(nn.Module):
    """Dropout draws from the global RNG every step: a resume that restored it wrongly would diverge."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 3, padding=1)
        self.drop = nn.Dropout(0.2)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.drop(self.conv(x)))


SPEC = TrainSpec(steps=11, lr=1e-2, batch_size=3, losses={"l1": 1.0}, checkpoint_every=3, log_every=1, device="cpu")


class Crash(Exception):
    pass


def _fresh() -> nn.Module:
    torch.manual_seed(0)
    return Noisy()


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    straight = _fresh()
    full = train(straight, Pairs(), SPEC, seed=4)

    def crash_at_step_7(metrics: dict, step: int) -> None:
        if step == 7:
            raise Crash

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Crash):
        train(_fresh(), Pairs(), SPEC, seed=4, log=crash_at_step_7, checkpoint_path=ckpt,
              checkpoint_extra={"run": "r1"})
    state = load_checkpoint(ckpt)
    assert state["step"] == 6 and state["extra"]["run"] == "r1"

    steps: list[int] = []
    resumed = _fresh()
    result = train(resumed, Pairs(), SPEC, seed=4, log=lambda m, s: steps.append(s), checkpoint_path=ckpt)
    assert steps == list(range(6, 11))  # continues at step 6 (the kill lost 6 and 7, they run again)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.final_loss == full.final_loss
    assert load_checkpoint(ckpt)["step"] == 11  # saved at the end too

    again = _fresh()  # a finished checkpoint: nothing left to train, the weights are restored
    assert train(again, Pairs(), SPEC, seed=4, checkpoint_path=ckpt).final_loss == full.final_loss
    assert torch.equal(again.conv.weight, straight.conv.weight)


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path: Path) -> None:
    model = nn.Conv2d(2, 2, 1)
    optimiser = torch.optim.Adam(model.parameters())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimiser=optimiser, scheduler=None, step=3,
                           rng_states=capture_rng_states(), extra={"mlflow_run_id": "abc"})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = torch.load(path, weights_only=True)  # plain tensors and containers only
    restore_rng_states(state["rng_states"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert state["extra"] == {"mlflow_run_id": "abc"}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_a_torn_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    torn = tmp_path / "torn.pt"
    torn.write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(torn)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.pt"
    train(_fresh(), Pairs(), SPEC.model_copy(update={"steps": 3}), seed=0, checkpoint_path=ckpt)
    other = nn.Sequential(nn.Conv2d(4, 12, 1), nn.PixelShuffle(2))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        train(other, Pairs(), SPEC, seed=0, checkpoint_path=ckpt)
