import pytest
import torch
from torch import nn

from distill.distiller import Distiller
from distill.evaluation import Task, evaluate
from distill.trainer import TrainSpec, train


class Pairs(torch.utils.data.Dataset):
    """RAW whose RGB target is a fixed function of it, so a 1x1 conv + shuffle can learn it."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.raw = torch.rand(16, 4, 8, 8, generator=g)
        self.rgb = nn.functional.pixel_shuffle(self.raw[:, [0, 1, 2, 3] * 3] * 0.5, 2)[:, :3]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        return self.raw[i], self.rgb[i]


class Tiny(nn.Module):
    def __init__(self, cin: int = 4, scale: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 3 * scale * scale, 1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        y = self.shuffle(self.conv(x))
        return nn.functional.avg_pool2d(y, 2**level) if level else y


def test_training_improves_held_out_psnr_and_is_seeded() -> None:
    data = Pairs()
    held_out = [(data.raw[i], data.rgb[i]) for i in range(2)]
    torch.manual_seed(1)
    model = Tiny()
    before = evaluate(model, held_out)["psnr"]
    spec = TrainSpec(steps=60, lr=2e-2, batch_size=4, losses={"mse": 1.0}, log_every=20)
    logged = []
    result = train(model, data, spec, seed=3, log=lambda m, s: logged.append(s))
    assert evaluate(model, held_out)["psnr"] > before + 3
    assert logged == [0, 20, 40, 59] and result.history[-1]["step"] == 59
    torch.manual_seed(1)
    twin = Tiny()
    train(twin, data, spec, seed=3)
    assert torch.equal(twin.conv.weight, model.conv.weight)


def test_level_task_downsamples_the_target() -> None:
    raw, rgb = torch.rand(1, 4, 8, 8), torch.rand(1, 3, 16, 16)
    x, target = Task(level=2).inputs_targets(raw, rgb)
    assert x is raw and target.shape == (1, 3, 4, 4)
    assert torch.allclose(target[0, :, 0, 0], rgb[0, :, :4, :4].mean(dim=(1, 2)))
    assert Task(level=2).forward(Tiny(), raw).shape == (1, 3, 4, 4)


def test_clean_image_task_maps_the_target_to_itself() -> None:
    data = Pairs()
    model = Tiny(cin=3, scale=1)
    task = Task(clean_image=True)
    pairs = [(data.raw[i], data.rgb[i]) for i in range(2)]
    before = evaluate(model, pairs, task)["psnr"]
    train(model, data, TrainSpec(steps=100, lr=5e-2, batch_size=4, losses={"mse": 1.0}), task=task)
    after = evaluate(model, pairs, task)["psnr"]
    assert after > before + 5, (before, after)


def test_output_kd_term_is_logged_and_pulls_towards_teacher() -> None:
    data = Pairs()
    teacher = Tiny()
    nn.init.zeros_(teacher.conv.weight)
    nn.init.zeros_(teacher.conv.bias)
    student = Tiny()
    result = train(student, data, TrainSpec(steps=40, lr=2e-2, batch_size=4, losses={"mse": 1.0}),
                   kd=Distiller(teacher, output_weight=10.0, output_loss="mse"))
    assert "kd_output" in result.history[0]
    assert student(data.raw[:4]).abs().mean() < data.rgb[:4].abs().mean()  # pulled towards the zero teacher


def test_a_frozen_model_is_refused_with_a_clear_message() -> None:
    model = Tiny()
    Distiller(model, output_weight=1.0)  # freezes its teacher
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, Pairs(), TrainSpec(steps=1, batch_size=2))


def test_grad_clip_bounds_every_step_and_logs_the_norm_before_it() -> None:
    """The optimiser sees gradients of global norm <= grad_clip; the logged norm is the one before clipping."""
    clip = 1e-3
    torch.manual_seed(0)
    model = Tiny()
    seen: list[float] = []

    def gradient_norm_of_last_step(step: int) -> None:  # runs before each step: the last step's grads are in place
        if step:
            seen.append(float(torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))))

    spec = TrainSpec(steps=5, lr=1e-2, batch_size=4, losses={"mse": 1.0}, log_every=1, grad_clip=clip)
    result = train(model, Pairs(), spec, seed=0, on_step=gradient_norm_of_last_step)
    assert len(seen) == 4 and max(seen) <= clip * 1.0001
    assert all(h["grad_norm"] > 10 * clip for h in result.history)  # the raw norms were far above the clip
    unclipped = train(Tiny(), Pairs(), spec.model_copy(update={"grad_clip": None}), seed=0)
    assert "grad_norm" not in unclipped.history[0]
    with pytest.raises(ValueError, match="grad_clip"):
        TrainSpec(grad_clip=0.0)
