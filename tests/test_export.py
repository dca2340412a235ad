"""Deployment: the fast kernels step aside while graphs are captured, and `hf_segmodels.export` writes ONNX /
OpenVINO graphs of all four architectures that take any batch size and the heights / widths of each architecture's
size rule, and reproduce PyTorch (the runtimes are the optional `deploy` extra)."""

import json

import numpy as np
import pytest
import torch
from tiny import WIDE_RESNET

from hf_segmodels import export, kernels, testing_utils
from hf_segmodels.export import (
    ExportVerificationError,
    SizeRule,
    export_model,
    main,
    run_exported,
    second_shape,
    size_rule,
    verify,
)
from hf_segmodels.testing_utils import tiny_config, tiny_maskformer_backbone
from hf_segmodels.training.registry import build_config, get_architecture

onnxruntime = pytest.importorskip("onnxruntime", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
ARCHITECTURES = ("segmenter", "setr", "segformer", "maskformer")
# The size rule of each tiny model: 2 pixels per side in every strided map (a ViT's patch grid, patch size 4; the
# MiT's first spatial reduction, ratio 8 at stride 4, needs 16 tokens per side; the ResNet's stride-32 map).
RULES = {
    "segmenter": "any, at least 5",
    "setr": "any, at least 5",
    "segformer": "any, at least 61",
    "maskformer": "any, at least 33",
}


def tiny_model(name: str):
    architecture = get_architecture(name)
    config = build_config(architecture, "tiny", 64, {0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    return architecture.model_class(config).eval()


def pytorch_outputs(model, pixel_values: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    return [getattr(outputs, name).numpy() for name in export.output_names(model)]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_one_dynamic_export_reproduces_pytorch_in_both_runtimes_at_two_sizes_and_batches(name, tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    openvino = pytest.importorskip("openvino", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    model = tiny_model(name)
    # (exporting, any fast kernel active) at every forward: the kernels must step aside under export (the rewrites
    # in standard operators stay: SegFormer's merged decoder, the folded BatchNorms, Winograd's graph form)
    calls = []
    kept = kernels.GRAPH_REWRITES + kernels.EXPORT_REWRITES
    kernel_names = [name for name in kernels.KERNELS if name not in kept]
    model.register_forward_pre_hook(
        lambda *_: calls.append((torch.compiler.is_exporting(), any(map(kernels.active, kernel_names))))
    )
    config = export_model(model, tmp_path, ("onnx", "openvino"), height=64, width=64)
    assert config["exporter"] == "dynamo" and config["dynamic"]
    assert config["dynamic_axes"] == {"batch": "any, at least 1", "height": RULES[name], "width": RULES[name]}
    assert json.loads((tmp_path / "export_config.json").read_text()) == config
    assert any(exporting for exporting, _ in calls) and not any(active for exporting, active in calls if exporting)
    assert not any(module.training for module in model.modules())  # the model is left in eval mode
    # the export's own verification: both formats at the export size and at a second batch size and size
    verified = {(each["format"], tuple(each["input_shape"])) for each in config["verified"]}
    second = second_shape(size_rule(model), (1, 3, 64, 64))
    assert second[0] == 2 and second[2:] != (64, 64) and second[2] != second[3]
    assert verified == {(f, s) for f in ("onnx", "openvino") for s in ((1, 3, 64, 64), second)}
    assert config["max_abs_difference"] < 1e-4
    # the graphs' batch, height and width are dynamic
    dims = onnx.load(str(tmp_path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [bool(dim.dim_param) for dim in dims] == [True, False, True, True] and dims[1].dim_value == 3
    partial_shape = openvino.Core().read_model(str(tmp_path / "openvino_model.xml")).inputs[0].get_partial_shape()
    assert [partial_shape[axis].is_dynamic for axis in range(4)] == [True, False, True, True]
    # independently of the export's own check: fresh inputs of two batch sizes and sizes through both runtimes
    for batch, height, width in ((1, 64, 64), (2, 96, 128)):
        pixel_values = torch.randn(batch, 3, height, width)
        expected = pytorch_outputs(model, pixel_values)
        for format, file in config["files"].items():
            obtained = run_exported(tmp_path / file, format, pixel_values.numpy())
            assert len(obtained) == len(expected)
            for value, reference in zip(obtained, expected):
                np.testing.assert_allclose(value, reference, atol=1e-4, rtol=0)
    # a size outside the rule: refused before the runtime sees it, the message names the rule
    bad = (1, 3, {"segmenter": 4, "setr": 4, "segformer": 60, "maskformer": 32}[name], 64)
    with pytest.raises(ValueError, match=f"rule is '{RULES[name]}' \\(pixels\\); got height {bad[2]}"):
        run_exported(tmp_path / "model.onnx", "onnx", np.zeros(bad, dtype=np.float32))


def test_maskformer_with_a_swin_backbone_exports_a_dynamic_batch_at_a_fixed_size(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    model = testing_utils.tiny_model("maskformer", backbone_config=tiny_maskformer_backbone("swin", depths=[1] * 4))
    config = export_model(model, tmp_path, "onnx", height=64, width=96)
    assert config["exporter"] == "dynamo" and config["dynamic"]
    assert config["dynamic_axes"] == {"batch": "any, at least 1", "height": "fixed at the export size",
                                      "width": "fixed at the export size"}  # fmt: skip
    assert [each["input_shape"] for each in config["verified"]] == [[1, 3, 64, 96], [2, 3, 64, 96]]
    dims = onnx.load(str(tmp_path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert bool(dims[0].dim_param) and [dim.dim_value for dim in dims[1:]] == [3, 64, 96]
    pixel_values = torch.randn(3, 3, 64, 96)
    for value, reference in zip(run_exported(tmp_path / "model.onnx", "onnx", pixel_values.numpy()),
                                pytorch_outputs(model, pixel_values)):  # fmt: skip
        np.testing.assert_allclose(value, reference, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"takes only height x width 64x96 \(its height / width rule is 'fixed at "
                                         r"the export size'\); got 96x64"):
        run_exported(tmp_path / "model.onnx", "onnx", np.zeros((1, 3, 96, 64), dtype=np.float32))


def test_wide_maskformer_exports_winograd_in_standard_operators_and_reproduces_pytorch(tmp_path):
    """A MaskFormer with a 128-channel ResNet stage and pixel decoder: the dynamic export writes the wide 3x3
    convolutions whose maps are 5 pixels or more at the rule's minimum (1/8 and 1/4 resolution here) as Winograd in
    standard operators, with the folded BatchNorms, and both runtimes reproduce PyTorch at two sizes and batches."""
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    pytest.importorskip("openvino", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    backbone = tiny_maskformer_backbone(**WIDE_RESNET)
    model = testing_utils.tiny_model("maskformer", backbone_config=backbone, fpn_feature_size=128,
                                     mask_feature_size=128)  # fmt: skip
    config = export_model(model, tmp_path, ("onnx", "openvino"), height=64, width=64)
    assert config["exporter"] == "dynamo" and config["dynamic_axes"]["height"] == "any, at least 33"
    assert len(config["verified"]) == 4 and config["max_abs_difference"] < 1e-4
    nodes = onnx.load(str(tmp_path / "model.onnx")).graph.node
    assert "DepthToSpace" in {node.op_type for node in nodes}  # the Winograd form
    assert "BatchNormalization" not in {node.op_type for node in nodes}  # folded
    pixel_values = torch.randn(2, 3, 45, 70)
    for value, reference in zip(run_exported(tmp_path / "model.onnx", "onnx", pixel_values.numpy()),
                                pytorch_outputs(model, pixel_values)):  # fmt: skip
        np.testing.assert_allclose(value, reference, atol=1e-4, rtol=0)
    # --no_winograd (int8 / reduced-precision targets): plain convolutions
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    assert main(["--model", str(folder), "--output", str(tmp_path / "plain"), "--no_winograd", "--height", "64",
                 "--width", "64", "--no_verify"]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "plain" / "export_config.json").read_text())
    assert plain["winograd"] is False and config["winograd"] is True
    nodes = onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node
    assert "DepthToSpace" not in {node.op_type for node in nodes}


def test_export_cli_from_a_folder_and_a_corrupted_export_fails_loudly(tmp_path, capsys):
    import onnx

    model = tiny_model("setr")
    model.save_pretrained(tmp_path / "model")
    assert main(["--model", str(tmp_path / "model"), "--format", "onnx", "--output", str(tmp_path / "out"),
                 "--height", "64", "--width", "64"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "input batch any, at least 1; height, width any, at least 5" in printed
    assert "onnx on (1, 3, 64, 64): max abs difference to PyTorch" in printed
    assert "onnx on (2, 3, 49, 81): max abs difference to PyTorch" in printed
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"))
    for weight in graph.graph.initializer:  # every weight matrix off by 10%
        values = onnx.numpy_helper.to_array(weight)
        if values.dtype == np.float32 and values.size > 100:
            weight.CopyFrom(onnx.numpy_helper.from_array(values * 1.1, weight.name))
    onnx.save(graph, str(tmp_path / "out" / "model.onnx"))
    for shape in ((1, 3, 64, 64), (2, 3, 49, 81)):
        with pytest.raises(ExportVerificationError, match=r"differs from PyTorch by up to .* \(> atol 0.0001\)"):
            verify(tmp_path / "out" / "model.onnx", "onnx", model, shape)
    (tmp_path / "out" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(ExportVerificationError, match="cannot be run"):
        verify(tmp_path / "out" / "model.onnx", "onnx", model, (1, 3, 64, 64))
    with pytest.raises(ValueError, match="Unknown export format"):
        export_model(model, tmp_path / "x", "tflite")
    # a size off the rule: exit status 1 and the rule on stderr, nothing exported
    assert main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "bad"), "--height", "4"]) == 1
    assert "height / width rule is 'any, at least 5' (pixels); got height 4." in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model.onnx").exists()


def test_sizes_off_the_rule_are_refused_with_the_rule_named(tmp_path):
    with pytest.raises(ValueError, match=r"rule is 'any, at least 5' \(pixels\); got height 4, width 3\. Pad or "
                                         r"resize the input to at least 5 pixels per side\. Or export .* --static"):
        export_model(tiny_model("segmenter"), tmp_path, "onnx", height=4, width=3)
    with pytest.raises(ValueError, match=r"rule is 'any, at least 61' \(pixels\); got height 40\."):
        export_model(tiny_model("segformer"), tmp_path, "onnx", height=40, width=64)
    assert not list(tmp_path.iterdir())  # refused before anything is written
    # the released configurations' rules
    from hf_segmodels import MaskFormerConfig, SegformerConfig, SegmenterConfig

    class Released:  # size_rule reads only the config
        def __init__(self, config):
            self.config = config

    assert size_rule(Released(SegmenterConfig.from_preset("segmenter-b16-ade"))) == SizeRule(17)
    assert size_rule(Released(SegformerConfig.from_preset("segformer-b0-ade"))) == SizeRule(61)
    assert size_rule(Released(MaskFormerConfig.from_preset("maskformer-r50-ade"))) == SizeRule(33)
    swin = size_rule(Released(tiny_config("maskformer", backbone_config=tiny_maskformer_backbone("swin"))))
    assert swin == SizeRule(dynamic_size=False) and swin.describe() == "fixed at the export size"
    assert second_shape(swin, (1, 3, 64, 96)) == (2, 3, 64, 96)  # only the batch varies
    # odd sides: they exercise the ceil divisions of strided layers and the ViTs' padding
    assert second_shape(SizeRule(17), (2, 3, 512, 512)) == (1, 3, 385, 641)
    assert second_shape(SizeRule(61), (1, 3, 64, 64)) == (2, 3, 61, 81)


def test_static_export_fixes_the_shape_and_takes_any_size_the_model_does(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the deploy extra (pip install hf-segmodels[deploy])")
    model = tiny_model("setr")
    config = export_model(model, tmp_path, "onnx", height=42, width=58, dynamic=False)
    assert config["exporter"] == "dynamo" and not config["dynamic"] and config["size_rule"] is None
    assert [each["input_shape"] for each in config["verified"]] == [[1, 3, 42, 58]]
    dims = onnx.load(str(tmp_path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [dim.dim_value for dim in dims] == [1, 3, 42, 58]
    pixel_values = torch.randn(1, 3, 42, 58)
    np.testing.assert_allclose(run_exported(tmp_path / "model.onnx", "onnx", pixel_values.numpy())[0],
                               pytorch_outputs(model, pixel_values)[0], atol=1e-4, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"static export takes only pixel_values of shape \(1, 3, 42, 58\)"):
        run_exported(tmp_path / "model.onnx", "onnx", np.zeros((2, 3, 42, 58), dtype=np.float32))


def test_a_failing_dynamo_export_falls_back_to_a_static_torchscript_export_with_a_warning(tmp_path, monkeypatch):
    # a size rule laxer than the graph (a patch grid of 1; the graph needs 2): torch.export refuses it
    monkeypatch.setattr(export, "size_rule", lambda model: SizeRule(minimum=4))
    model = tiny_model("setr")
    with pytest.warns(RuntimeWarning, match=r"(?s)dynamo ONNX exporter failed \(UserError: Constraints violated .*\); "
                                            r"exporting with the TorchScript exporter at ONE fixed shape "
                                            r"\(1, 3, 64, 64\) instead"):
        config = export_model(model, tmp_path, "onnx", height=64, width=64)
    assert config["exporter"] == "torchscript" and not config["dynamic"]
    assert config["dynamic_axes"] == {"batch": "fixed", "height": "fixed", "width": "fixed"}
    assert [each["input_shape"] for each in config["verified"]] == [[1, 3, 64, 64]]
    assert config["max_abs_difference"] < 1e-4


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fast_kernels_step_aside_while_graphs_are_captured(name):
    model = tiny_model(name)
    pixel_values = torch.randn(1, 3, 64, 64)
    logits = export._Outputs(model, ("logits",)).eval()  # (pixel_values -> (logits,))

    assert all(kernels.enabled.values())
    with torch.no_grad():
        traced = torch.jit.trace(logits, pixel_values, check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
        torch.testing.assert_close(traced(pixel_values)[0], model(pixel_values=pixel_values).logits, atol=1e-4,
                                   rtol=0)
        exported = torch.export.export(logits, (pixel_values,))
    assert not [node for node in exported.graph.nodes if "mkldnn" in str(node.target)]
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(pixel_values)[0], model(pixel_values=pixel_values).logits,
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
                                           "merged_decoder": False, "patch_gemm": False}
    monkeypatch.setenv(kernels.ENVIRONMENT_VARIABLE, "onednn,fast")
    with pytest.raises(ValueError, match=r"unknown kernels \['fast'\]"):
        kernels._from_environment()
