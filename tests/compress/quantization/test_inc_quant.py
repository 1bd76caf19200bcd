"""Intel Neural Compressor PT2E static INT8: quantized graph, close to float, autotune against a budget."""
import pytest
import torch

from compress.quantization.inc_quant import held_out_psnr, inc_autotune, inc_static_int8
from compress.runtime.latency import torch_latency_ms
from students import create_student


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = create_student("smallnet", width=8).eval()
    calibration = torch.rand(6, 4, 24, 24) * 0.6
    with torch.no_grad():  # targets = the float model's own output: float PSNR is the 100 dB cap
        pairs = [(raw, model(raw[None])[0].clamp(0, 1)) for raw in torch.rand(2, 4, 16, 20) * 0.6]
    return model, calibration, pairs


def _quant_ops(model: torch.nn.Module) -> int:
    return sum("quantize_per" in str(n.target) for n in model.graph.nodes)


def test_static_int8_is_quantized_and_close_to_float(setup) -> None:
    model, calibration, pairs = setup
    quantized = inc_static_int8(model, calibration)
    assert _quant_ops(quantized) >= 3  # input and the convs' activations
    assert 30.0 < held_out_psnr(quantized, pairs) < 100.0  # targets are the float output: this is parity


def test_autotune_meets_a_loose_budget_on_the_first_trial(setup) -> None:
    model, calibration, pairs = setup
    result = inc_autotune(model, calibration, pairs, max_drop_db=80.0, max_trials=3)
    assert result.psnr_float == 100.0
    assert len(result.trials) == 1 and result.drop_db <= 80.0
    assert result.config["w_dtype"] == "int8" and result.config["act_granularity"] == "per_tensor"
    assert _quant_ops(result.model) >= 3


def test_autotune_keeps_the_best_trial_when_the_budget_is_out_of_reach(setup) -> None:
    model, calibration, pairs = setup
    result = inc_autotune(model, calibration, pairs, max_drop_db=0.0, max_trials=2)
    assert len(result.trials) == 2  # both tried, neither is lossless
    assert result.psnr_int8 == pytest.approx(max(t["psnr"] for t in result.trials), abs=1e-6)


def test_latency_and_bad_input(setup) -> None:
    model, calibration, _ = setup
    quantized = inc_static_int8(model, calibration)  # an exported Q/DQ graph: timed without eval()
    latency = torch_latency_ms(quantized, (1, 4, 16, 16), num_threads=1, runs=2, warmup=1)
    assert latency["median_ms"] > 0 and latency["num_threads"] == 1
    with pytest.raises(ValueError, match="NCHW"):
        inc_static_int8(model, calibration[0])
    with pytest.raises(ValueError, match="max_drop_db"):
        inc_autotune(model, calibration, [], max_drop_db=-1.0)
