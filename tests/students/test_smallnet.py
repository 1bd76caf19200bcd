import pytest
import torch

from students import create_student, list_students


def test_smallnet_has_the_published_4652_parameters() -> None:
    model = create_student("smallnet")
    assert sum(p.numel() for p in model.parameters()) == 4652


def test_smallnet_maps_packed_raw_to_double_resolution_rgb() -> None:
    out = create_student("smallnet", width=8)(torch.rand(2, 4, 16, 24))
    assert out.shape == (2, 3, 32, 48)
    assert out.min() >= 0  # ReLU before the pixel shuffle


def test_batch_norm_variant_adds_only_bn_parameters() -> None:
    model = create_student("smallnet", batch_norm=True)
    bn = sum(p.numel() for n, p in model.named_parameters() if ".bn" in f".{n}" or n.startswith("bn"))
    assert sum(p.numel() for p in model.parameters()) - bn == 4652


def test_unknown_student_lists_known_names() -> None:
    with pytest.raises(KeyError, match="known: .*smallnet"):
        create_student("bignet")
    assert "smallnet" in list_students()


def test_wrong_config_key_names_the_model() -> None:
    with pytest.raises(TypeError, match="student 'smallnet'"):
        create_student("smallnet", depth=3)


@pytest.mark.parametrize("name", ["smallnet", "smallnet_mialgo"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_output_channel_starts_alive_at_mid_grey(name: str, batch_norm: bool) -> None:
    """No channel before the last ReLU may start dead (the 1-in-3 collapse).  Plain convs start at 0.5
    everywhere; with BatchNorm each channel is N(0.5, 1) over a batch, so about 69 % of it is alive."""
    x = torch.rand(2, 4, 16, 16)
    for seed in range(10):
        torch.manual_seed(seed)
        model = create_student(name, batch_norm=batch_norm).train()
        pre_relu = model.bn3(model.conv3(model.act2(model.bn2(model.conv2(model.act1(model.bn1(model.conv1(x))))))))
        alive = (pre_relu > 0).float().mean(dim=(0, 2, 3))
        assert bool((alive > (0.6 if batch_norm else 0.95)).all()), f"seed {seed}: alive fractions {alive.tolist()}"
        if not batch_norm:
            assert float(model(x).mean()) == pytest.approx(0.5, abs=0.15)
