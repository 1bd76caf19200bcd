import pytest
import torch

from compress.checkpoint import ModelSpec, build_model, load_model, save_model
from compress.pruning.prune import PruneTarget, prune_model
from compress.runtime.profile import count_macs, count_params


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


# --- every registered model, the PixelShuffle rule, budgets -----------------------------------------

from compress.export.onnx_export import export_onnx  # noqa: E402
from compress.pruning.prune import PruneError, ratio_for_budget  # noqa: E402
from compress.pruning.rules import ShuffleChainStandIn, shuffle_chains_as_leaves  # noqa: E402
from compress.runtime.parity import run_onnx  # noqa: E402
from distill.metrics import psnr_db  # noqa: E402
from students import STUDENTS  # noqa: E402
from teachers import TEACHERS  # noqa: E402

REGISTRY = [("student", n) for n in STUDENTS.names()] + [("teacher", n) for n in TEACHERS.names()]


def _tiny(family: str, name: str) -> tuple[torch.nn.Module, torch.Tensor, ModelSpec]:
    registry = STUDENTS if family == "student" else TEACHERS
    info = registry.info(name)
    side = -(-max(32, info.min_input) // info.input_multiple) * info.input_multiple
    spec = ModelSpec(family=family, name=name, config=dict(info.tiny_config))
    torch.manual_seed(0)
    return build_model(spec).eval(), torch.rand(1, info.in_channels, side, side), spec


@pytest.mark.parametrize(("family", "name"), REGISTRY)
def test_every_registry_model_prunes_at_30_and_60_percent_and_exports_to_onnx(family, name, tmp_path) -> None:
    for ratio in (0.3, 0.6):
        model, x, _ = _tiny(family, name)
        expected_shape = model(x).shape
        macs = count_macs(model, x.shape)
        plan = prune_model(model, x, PruneTarget(ratio=ratio))
        with torch.no_grad():
            y = model(x)
        assert y.shape == expected_shape and torch.isfinite(y).all()
        assert count_macs(model, x.shape) < macs
        onnx_path = export_onnx(model, tmp_path / f"{ratio}.onnx", tuple(x.shape))
        assert psnr_db(run_onnx(onnx_path, x.numpy()), y.numpy()) > 60
        assert plan and all(w >= 1 for w in plan.values())


@pytest.mark.parametrize(("family", "name"), [("student", "lwisp"), ("student", "aaunet_student")])
def test_channel_plan_rebuilds_pixel_shuffle_chains_and_coupled_blocks(family, name, tmp_path) -> None:
    model, x, spec = _tiny(family, name)
    model.prune_ignore = tuple(p for p in model.prune_ignore if "expand" not in p)
    plan = prune_model(model, x, PruneTarget(ratio=0.5))
    rebuilt, _ = load_model(save_model(model, spec.model_copy(update={"widths": plan}), tmp_path))
    assert torch.equal(rebuilt(x), model(x))


def test_pixel_shuffle_chains_are_found_only_where_a_conv_really_feeds_the_shuffle() -> None:
    lwisp, x, _ = _tiny("student", "lwisp")
    with shuffle_chains_as_leaves(lwisp, x) as paths:
        assert paths == ["up1.core.expand", "up2.core.expand", "up3.core.expand", "up4.core.expand"]
        assert isinstance(lwisp.get_submodule("up1.core.expand"), ShuffleChainStandIn)
        assert isinstance(lwisp.get_submodule("up1.core.shuffle"), torch.nn.Identity)
    assert isinstance(lwisp.get_submodule("up1.core.shuffle"), torch.nn.PixelShuffle)  # restored

    class Decoy(torch.nn.Module):  # the conv preceding the shuffle in attribute order does not feed it
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 1)
            self.shuffle = torch.nn.PixelShuffle(2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.shuffle(torch.cat([t, t], 1)) + self.conv(t).mean()

    with shuffle_chains_as_leaves(Decoy(), torch.rand(1, 4, 4, 4)) as paths:
        assert paths == []


def test_convs_feeding_a_pixel_shuffle_lose_whole_r2_channel_groups() -> None:
    model, x, _ = _tiny("student", "lwisp")
    model.prune_ignore = ("tail",)  # let the sub-pixel convs be pruned too
    y_before = model(x)
    expand = model.up2.core.expand
    kept_weights = expand.weight.detach().clone()
    prune_model(model, x, PruneTarget(ratio=0.5))
    refine_in = model.up2.core.refine[0].in_channels
    assert expand.out_channels == 4 * refine_in < kept_weights.shape[0]
    # every kept sub-pixel channel keeps all four of its conv channels, in order
    rows = [next(i for i in range(kept_weights.shape[0]) if torch.equal(kept_weights[i], w)) for w in expand.weight]
    groups = [rows[i : i + 4] for i in range(0, len(rows), 4)]
    assert all(g == list(range(g[0], g[0] + 4)) and g[0] % 4 == 0 for g in groups), groups
    assert model(x).shape == y_before.shape


def test_macs_budget_is_met_by_the_searched_ratio() -> None:
    model, x, _ = _tiny("student", "lwisp")
    before = count_macs(model, x.shape)
    target = PruneTarget(macs_reduction=0.5)
    ratio = ratio_for_budget(model, x, target)
    assert 0 < ratio < 0.9
    prune_model(model, x, target)
    assert 0.5 <= 1 - count_macs(model, x.shape) / before < 0.6


def test_an_unreachable_budget_and_two_targets_are_errors() -> None:
    model, x, _ = _tiny("student", "smallnet")
    with pytest.raises(PruneError, match="no channel ratio up to 90 % removes 94% of the params"):
        prune_model(model, x, PruneTarget(params_reduction=0.94))
    with pytest.raises(ValueError, match="one of ratio, macs_reduction"):
        PruneTarget(ratio=0.3, macs_reduction=0.5)


def test_taylor_importance_uses_gradients_and_layer_ratios_override() -> None:
    model, x, _ = _tiny("student", "smallnet")
    with pytest.raises(PruneError, match="needs gradients"):
        prune_model(model, x, PruneTarget(importance="taylor"))
    calls = []

    def grad_fn(m: torch.nn.Module) -> None:
        calls.append(1)
        m(torch.rand(2, 4, 16, 16)).mean().backward()

    plan = prune_model(model, x, PruneTarget(ratio=0.25, importance="taylor", layer_ratios={"conv1": 0.5}),
                       grad_fn=grad_fn)
    assert calls and plan["conv1"] == 4 and plan["conv2"] == 6  # width-8 tiny Smallnet: 8 -> 4 and 8 -> 6


def test_round_targets_compose_to_the_target_and_weights_scale_the_searched_ratio() -> None:
    from compress.pruning.prune import round_targets
    from compress.pruning.sensitivity import derive_layer_weights

    rounds = round_targets(PruneTarget(ratio=0.5), 3)
    keep = 1.0
    for r in rounds:
        keep *= 1 - r.ratio
    assert keep == pytest.approx(0.5)
    budget = round_targets(PruneTarget(macs_reduction=0.6), 2)  # 30 % of the original, then 30 % of it again
    assert [r.macs_reduction for r in budget] == pytest.approx([0.3, 1 - 0.4 / 0.7])
    weights = derive_layer_weights([{"layer": "a", "drop_db": 2.0}, {"layer": "b", "drop_db": 0.1},
                                    {"layer": "c", "drop_db": 0.5}])
    assert weights == pytest.approx({"b": 1.5, "c": 1.0, "a": 0.5})
    target = PruneTarget(layer_weights=weights, layer_ratios={"c": 0.1})
    assert target.layer_ratio_dict(0.4) == pytest.approx({"a": 0.2, "b": 0.6, "c": 0.1})


def test_a_frozen_model_prunes_too() -> None:
    model, x, _ = _tiny("student", "smallnet")
    for p in model.parameters():
        p.requires_grad_(False)  # e.g. it served as a KD teacher
    plan = prune_model(model, x, PruneTarget(ratio=0.5))
    assert plan["conv1"] == 4 and not any(p.requires_grad for p in model.parameters())
