import pytest
import torch

from compress.checkpoint import ModelSpec, build_model, load_model, save_model
from compress.profile import count_macs, count_params
from compress.prune import PruneTarget, prune_model


@pytest.mark.parametrize(
    "family,name,config", [("student", "smallnet", {"width": 16, "batch_norm": True}),
                           ("teacher", "punet", {"base_width": 8})]
)
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_prune_keeps_forward_and_round_trips_through_channel_plan(tmp_path, family, name, config, ratio) -> None:
    spec = ModelSpec(family=family, name=name, config=config)
    model = build_model(spec).eval()
    x = torch.rand(1, 4, 32, 32)
    macs_before, params_before = count_macs(model, x.shape), count_params(model)
    plan = prune_model(model, x, PruneTarget(ratio=ratio))
    y = model(x)
    assert y.shape == (1, 3, 64, 64)
    assert count_macs(model, x.shape) < macs_before and count_params(model) < params_before
    save_model(model, spec.model_copy(update={"widths": plan}), tmp_path)
    rebuilt, rebuilt_spec = load_model(tmp_path)
    assert rebuilt_spec.widths == plan
    assert torch.equal(rebuilt(x), y)


def test_smallnet_output_conv_is_never_pruned() -> None:
    model = build_model(ModelSpec(family="student", name="smallnet")).eval()
    plan = prune_model(model, torch.rand(1, 4, 16, 16), PruneTarget(ratio=0.5))
    assert plan == {"conv1": 8, "conv2": 8, "conv3": 12}


def test_bn_scale_importance_needs_batchnorm() -> None:
    model = build_model(ModelSpec(family="student", name="smallnet"))
    with pytest.raises(ValueError, match="BatchNorm"):
        prune_model(model, torch.rand(1, 4, 16, 16), PruneTarget(importance="bn_scale"))


def test_load_model_rejects_weights_of_another_architecture(tmp_path) -> None:
    model = build_model(ModelSpec(family="student", name="smallnet", config={"width": 8}))
    save_model(model, ModelSpec(family="student", name="smallnet", config={"width": 16}), tmp_path)
    with pytest.raises(ValueError, match="do not fit student 'smallnet'"):
        load_model(tmp_path)
