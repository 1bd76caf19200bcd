import socket

import pytest
import timm  # after students: torchvision on CPU torch (teachers.torch_compat)
import torch
from torch import nn

import students.mobile_deepisp  # noqa: F401  (registers mobile_deepisp)
from compress.fold import fold_model
from students import STUDENTS, create_student
from students.mobile_deepisp import MobileDeepISP


def _tiny() -> MobileDeepISP:
    torch.manual_seed(0)
    return create_student("mobile_deepisp", **STUDENTS.info("mobile_deepisp").tiny_config)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_has_1874164_parameters_of_which_the_encoder_is_timm_mobilenetv2_100() -> None:
    model = create_student("mobile_deepisp")
    assert _params(model) == 1_874_164
    assert _params(model.encoder) == 1_812_000  # the paper gives no count; this is MobileNetV2 w/o classifier
    reference = timm.create_model("mobilenetv2_100", pretrained=False, features_only=True, in_chans=4)
    ours = {k: v.shape for k, v in model.encoder.backbone.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}
    assert model.encoder.channels == [16, 24, 32, 96, 320]


def test_width_is_timms_channel_multiplier_and_the_decoder_follows_it() -> None:
    assert _params(_tiny()) == 138_876
    model = create_student("mobile_deepisp", width=0.5)
    assert model.encoder.channels == [8, 16, 16, 48, 160]
    assert [b.convs[0].out_channels for b in model.decoder] == [48, 16, 16, 8, 8]
    assert [b.convs[0].in_channels for b in model.decoder] == [160 + 48, 48 + 16, 16 + 16, 16 + 8, 8 + 4]
    assert create_student("mobile_deepisp", width=0.05).encoder.channels == [8, 8, 8, 8, 16]  # timm's minimum 8
    with pytest.raises(ValueError, match="width must be > 0"):
        create_student("mobile_deepisp", width=0)


@pytest.mark.parametrize("h, w", [(32, 32), (32, 64), (96, 64), (64, 160)])
def test_maps_packed_raw_to_double_resolution_rgb_in_unit_range(h: int, w: int) -> None:
    with torch.no_grad():
        out = _tiny().eval()(torch.rand(2, 4, h, w))
    assert out.shape == (2, 3, 2 * h, 2 * w)
    assert out.min() > 0 and out.max() < 1  # sigmoid head


@pytest.mark.parametrize("h, w", [(48, 64), (64, 40), (16, 16)])
def test_sizes_that_are_not_multiples_of_32_are_rejected(h: int, w: int) -> None:
    assert STUDENTS.info("mobile_deepisp").input_multiple == 32
    with pytest.raises(ValueError, match="multiples of 32"):
        _tiny()(torch.rand(1, 4, h, w))


def test_each_decoder_block_gets_the_encoder_stage_of_its_resolution_as_skip() -> None:
    model = _tiny().eval()
    x = torch.rand(1, 4, 64, 96)
    stage_out: dict[str, torch.Tensor] = {}
    block_in: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [model.get_submodule(f"encoder.backbone.blocks.{i}").register_forward_hook(
        lambda _m, _a, out, i=i: stage_out.__setitem__(i, out)) for i in (0, 1, 2, 4, 6)]
    hooks += [block.register_forward_hook(lambda _m, args, _o, k=k: block_in.__setitem__(k, args))
              for k, block in enumerate(model.decoder)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    assert block_in[0][0] is stage_out[6]  # stride 32 features start the decoder
    for k, stage in enumerate([4, 2, 1, 0]):
        assert block_in[k][1] is stage_out[stage]
        assert block_in[k + 1][0].shape[-2:] == (64 // 2 ** (4 - k), 96 // 2 ** (4 - k))
    assert block_in[4][1] is x  # finest block sees the packed RAW itself


def test_output_has_a_gradient_through_every_skip() -> None:
    model = _tiny().eval()
    leaves: dict[int, torch.Tensor] = {}

    def cut(k: int):  # the skip becomes a leaf of its own: any gradient there went through the decoder
        def hook(_m: nn.Module, args: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            leaves[k] = args[1].detach().requires_grad_()
            return args[0], leaves[k]
        return hook

    hooks = [block.register_forward_pre_hook(cut(k)) for k, block in enumerate(model.decoder)]
    model(torch.rand(1, 4, 64, 64)).sum().backward()
    for hook in hooks:
        hook.remove()
    for k, leaf in sorted(leaves.items()):
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0, f"decoder.{k} ignores its skip"


def test_feature_taps_fire_coarse_to_fine_and_head_is_prune_ignored() -> None:
    model = _tiny().eval()
    assert list(MobileDeepISP.feature_taps[:5]) == [f"encoder.{p}" for p in reversed(model.encoder.stage_paths)]
    stride: dict[str, int] = {}
    hooks = [model.get_submodule(path).register_forward_hook(
        lambda _m, _i, out, path=path: stride.__setitem__(path, 64 // out.shape[-1])) for path in model.feature_taps]
    with torch.no_grad():
        model(torch.rand(1, 4, 64, 64))
    for hook in hooks:
        hook.remove()
    assert [stride[path] for path in model.feature_taps] == [32, 16, 8, 4, 2, 16, 8, 4, 2, 1]
    head = model.get_submodule(model.prune_ignore[0])
    assert isinstance(head, nn.Conv2d) and head.out_channels == 3 * 2 * 2


def test_backward_reaches_every_parameter() -> None:
    model = _tiny().train()
    model(torch.rand(2, 4, 32, 64)).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_fold_merges_timm_batchnormact_and_keeps_relu6() -> None:
    model = _tiny()
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.uniform_(0.5, 1.5, generator=generator)
            m.bias.data.normal_(0, 0.2, generator=generator)
    model.eval()
    folded, counts = fold_model(model)
    assert counts == {"reparameterized_blocks": 1, "conv_bn_folded": 15, "batchnorm_left": 0}
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == sum(
        isinstance(m, nn.ReLU6) for m in model.modules())
    x = torch.rand(2, 4, 64, 96)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < 1e-5


def test_builds_without_network_or_pretrained_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("mobile_deepisp tried to fetch pretrained weights")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(timm.models._builder, "load_pretrained", refuse)
    model = create_student("mobile_deepisp")
    assert model.encoder.backbone.conv_stem.in_channels == 4
