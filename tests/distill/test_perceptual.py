import pytest
import torch

from distill.perceptual import LAYER_NAMES, PerceptualLoss, vgg19_features
from distill.trainer import TrainSpec


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-layout VGG-19 state_dict with random weights (the real one is never downloaded)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier too
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_layout_matches_torchvision_indices() -> None:
    assert LAYER_NAMES[35] == "relu5_4" and LAYER_NAMES[3] == "relu1_2" and LAYER_NAMES[4] == "pool1"
    assert sum(p.numel() for p in vgg19_features().parameters()) == 20_024_384  # VGG-19 conv part


def test_perceptual_loss_is_zero_for_identical_images_and_positive_otherwise(vgg_file) -> None:
    loss = PerceptualLoss(vgg_file, layer="relu2_2")
    x = torch.rand(1, 3, 32, 32)
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, torch.rand(1, 3, 32, 32))) > 0
    pred = x.clone().requires_grad_(True)
    loss(pred, torch.zeros_like(x)).backward()
    assert pred.grad is not None and all(p.grad is None for p in loss.parameters())


def test_missing_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        PerceptualLoss(tmp_path / "vgg19.pth")
    with pytest.raises(ValueError, match="not found"):
        TrainSpec(losses={"l1": 1, "perceptual": 0.1}, perceptual={"weights": tmp_path / "vgg19.pth"})
    with pytest.raises(ValueError, match="needs perceptual.weights"):
        TrainSpec(losses={"perceptual": 1.0})


def test_train_spec_builds_the_perceptual_term(vgg_file) -> None:
    spec = TrainSpec(losses={"l1": 1.0, "perceptual": 0.5}, perceptual={"weights": vgg_file, "layer": "relu1_2"})
    x = torch.rand(1, 3, 16, 16)
    total, parts = spec.criterion()(x, x)
    assert set(parts) == {"l1", "perceptual"} and float(total) == 0.0
