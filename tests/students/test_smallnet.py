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
