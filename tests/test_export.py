"""Deployment: the fast kernels step aside while graphs are captured, and `hf_segmodels.export` writes ONNX /
OpenVINO graphs of all four architectures that reproduce PyTorch (the runtimes are the optional `deploy` extra)."""

import json

import numpy as np
import pytest
import torch

from hf_segmodels import kernels
from hf_segmodels.export import ExportVerificationError, export_model, main, run_exported, verify
from hf_segmodels.training.registry import build_config, get_architecture

onnxruntime = pytest.importorskip("onnxruntime", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
ARCHITECTURES = ("segmenter", "setr", "segformer", "maskformer")


def tiny_model(name: str):
    architecture = get_architecture(name)
    config = build_config(architecture, "tiny", 64, {0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    return architecture.model_class(config).eval()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_export_reproduces_pytorch_in_both_runtimes_at_two_sizes(name, tmp_path):
    pytest.importorskip("openvino", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    model = tiny_model(name)
    for format in ("onnx", "openvino"):
        for height, width in ((64, 64), (96, 128)):
            folder = tmp_path / f"{format}_{height}x{width}"
            config = export_model(model, folder, format, height=height, width=width)
            assert config["input_shape"] == [1, 3, height, width] and config["max_abs_difference"] < 1e-4
            assert not any(module.training for module in model.modules())  # the model is left in eval mode
            # independently of the export's own check: a fresh input through the runtime against the model
            pixel_values = torch.randn(1, 3, height, width)
            with torch.no_grad():
                expected = model(pixel_values=pixel_values).logits.numpy()
            obtained = run_exported(folder / config["file"], format, pixel_values.numpy())[0]
            np.testing.assert_allclose(obtained, expected, atol=1e-4, rtol=0)
            assert json.loads((folder / "export_config.json").read_text())["outputs"][0] == "logits"


def test_export_cli_from_a_folder_and_a_corrupted_export_fails_loudly(tmp_path, capsys):
    import onnx

    model = tiny_model("segformer")
    model.save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--format", "onnx", "--output", str(tmp_path / "out"),
                 "--height", "64", "--width", "64"]) == 0
    assert "max abs difference to PyTorch" in capsys.readouterr().out
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"))
    for weight in graph.graph.initializer:  # every weight matrix off by 10%
        values = onnx.numpy_helper.to_array(weight)
        if values.dtype == np.float32 and values.size > 100:
            weight.CopyFrom(onnx.numpy_helper.from_array(values * 1.1, weight.name))
    onnx.save(graph, str(tmp_path / "out" / "model.onnx"))
    with pytest.raises(ExportVerificationError, match=r"differs from PyTorch by up to .* \(> atol 0.0001\)"):
        verify(tmp_path / "out" / "model.onnx", "onnx", model, (1, 3, 64, 64))
    (tmp_path / "out" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ExportVerificationError, match="cannot be run"):
        verify(tmp_path / "out" / "model.onnx", "onnx", model, (1, 3, 64, 64))
    with pytest.raises(ValueError, match="Unknown export format"):
        export_model(model, tmp_path / "x", "tflite")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fast_kernels_step_aside_while_graphs_are_captured(name):
    model = tiny_model(name)
    pixel_values = torch.randn(1, 3, 64, 64)

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(pixel_values=x).logits

    assert all(kernels.enabled.values())
    with torch.no_grad():
        traced = torch.jit.trace(Logits(), pixel_values, check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
        torch.testing.assert_close(traced(pixel_values), model(pixel_values=pixel_values).logits, atol=1e-4, rtol=0)
        exported = torch.export.export(Logits(), (pixel_values,))
    assert not [node for node in exported.graph.nodes if "mkldnn" in str(node.target)]
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(pixel_values), model(pixel_values=pixel_values).logits,
                                   atol=1e-4, rtol=0)


def test_kernel_switches():
    from hf_segmodels import onednn

    layer, x = torch.nn.Linear(8, 8), torch.randn(2, 8)
    with torch.no_grad():
        assert onednn.usable(x, layer) == onednn._AVAILABLE
        with kernels.disabled("onednn"):
            assert not onednn.usable(x, layer) and kernels.enabled["winograd"]
        with kernels.disabled():
            assert not any(kernels.enabled.values())
        assert all(kernels.enabled.values())
    with pytest.raises(ValueError, match="Unknown kernels"):
        with kernels.disabled("fast"):
            pass


def test_kernel_environment_variable(monkeypatch):
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "0")
    assert not any(kernels._from_environment().values())
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "onednn,winograd")
    assert kernels._from_environment() == {"onednn": True, "winograd": True, "folded_batch_norm": False,
                                           "merged_decoder": False}
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "onednn,fast")
    with pytest.raises(ValueError, match=r"unknown kernels \['fast'\]"):
        kernels._from_environment()
