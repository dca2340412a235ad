"""The benchmarks' own measuring helpers (`benchmarks/`): what their tables are computed from must itself be right."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import ARCHITECTURES, tiny_model
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import run_all  # noqa: E402


def test_flop_count_includes_attention_on_cpu():
    """PyTorch's FLOP registry has no formula for the CPU flash-attention kernel; `count_flops` must count it as the
    Q K^T and P V products that the math backend computes explicitly."""
    query, key = torch.randn(2, 3, 100, 16), torch.randn(2, 3, 50, 16)
    flash = run_all.count_flops(lambda: F.scaled_dot_product_attention(query, key, key))
    with sdpa_kernel(SDPBackend.MATH):
        math = run_all.count_flops(lambda: F.scaled_dot_product_attention(query, key, key))
    assert flash == math == 4 * 2 * 3 * 100 * 50 * 16


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_whole_model_flop_count_does_not_depend_on_the_attention_kernel(architecture):
    model = tiny_model(architecture).eval().requires_grad_(False)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values=pixel_values)  # (first call: SegFormer's decoder merges its weights once, not counted)
        flash = run_all.count_flops(lambda: model(pixel_values=pixel_values))
        with sdpa_kernel(SDPBackend.MATH):
            math = run_all.count_flops(lambda: model(pixel_values=pixel_values))
    assert flash == math > 0


def test_profile_categories():
    import profile_cpu

    assert profile_cpu.pytorch_category("aten.addmm.default") == "matrix products"
    assert profile_cpu.pytorch_category("aten.baddbmm_.default") == "matrix products"  # (SegFormer's banded decoder)
    assert profile_cpu.pytorch_category("mkldnn._linear_pointwise.default") == "matrix products"
    assert profile_cpu.pytorch_category("aten.scaled_dot_product_attention.default") == "attention"
    assert profile_cpu.pytorch_category("mkldnn._convolution_pointwise.default") == "convolution"
    assert profile_cpu.pytorch_category("aten.copy_.default") == "data movement"
    assert profile_cpu.pytorch_category("aten.add_.Tensor") == "element-wise"
    assert profile_cpu.ort_category("FusedMatMul") == "matrix products"
    assert profile_cpu.ort_category("DepthToSpace") == "data movement"
    assert profile_cpu.ort_category("Einsum") == "matrix products"  # (MaskFormer's semantic scores)
    assert profile_cpu.ort_category("SomethingNew") == "other"


def test_profile_of_both_sides_adds_up(tmp_path):
    """The per-category times of ours (dispatch-mode CPU times) and of ONNX Runtime (its profiler, warm-ups left out)
    are per run and account for the run's time."""
    onnxruntime = pytest.importorskip("onnxruntime")  # (an optional extra; .ci/run installs it)
    import profile_cpu

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).eval()
    inputs = torch.randn(512, 256)
    with torch.inference_mode():
        ours = profile_cpu.profile_pytorch(lambda: model(inputs), threads=1, repeats=3)
    assert set(ours["categories"]) <= set(profile_cpu.CATEGORIES)
    assert ours["categories"]["matrix products"] > ours["categories"].get("element-wise", 0.0) > 0
    assert 0.3 < sum(ours["categories"].values()) / ours["measured_ms"] < 3
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (inputs,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    assert onnxruntime.InferenceSession(str(path)).get_inputs()[0].name == "x"
    runtime = profile_cpu.profile_ort(path, inputs.numpy(), threads=1, repeats=3, folder=tmp_path)
    assert runtime["categories"]["matrix products"] > 0
    assert 0.3 < sum(runtime["categories"].values()) / runtime["measured_ms"] < 3
    if importlib.util.find_spec("openvino") is not None:  # (the other optional runtime)
        assert profile_cpu.openvino_category("FullyConnected") == "matrix products"
        openvino = profile_cpu.profile_openvino(path, inputs.numpy(), threads=1, repeats=3)
        assert openvino["categories"]["matrix products"] > 0
        assert 0.3 < sum(openvino["categories"].values()) / openvino["measured_ms"] < 3
