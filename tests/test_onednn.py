"""oneDNN linear layers with fused GELU / residual addition: the same products as PyTorch's, used only at CPU float32
inference."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from hf_segmodels import kernels, onednn
from hf_segmodels.layers import TransformerLayer
from hf_segmodels.segmenter import SegmenterConfig

pytestmark = pytest.mark.skipif(not onednn._AVAILABLE, reason="this PyTorch build has no oneDNN")


@pytest.fixture(autouse=True)
def onednn_measured_faster(monkeypatch):
    """The tests below check the oneDNN path itself: it counts as the faster kernel for every shape (which one is
    faster on the running CPU is measured; `test_the_faster_kernel_is_measured_once_per_shape` checks that)."""
    monkeypatch.setattr(onednn, "onednn_is_faster", lambda layer, x: True)


class OpRecorder(TorchDispatchMode):
    """Names of the aten / mkldnn operators that ran inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name)
        return func(*args, **(kwargs or {}))


def ran_onednn(function) -> bool:
    with OpRecorder() as recorder:
        function()
    return "mkldnn::_linear_pointwise" in recorder.names


@pytest.fixture
def layer_and_inputs():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 96)
    x = torch.randn(2, 37, 48, generator=generator)
    return plain, x


def fast(plain: torch.nn.Linear, activation: str | None = None) -> onednn.Linear:
    """An `onednn.Linear` holding `plain`'s parameters (same state-dict keys)."""
    layer = onednn.Linear(plain.in_features, plain.out_features, activation=activation)
    layer.load_state_dict(plain.state_dict())
    return layer


def test_fused_products_equal_pytorch(layer_and_inputs):
    plain, x = layer_and_inputs
    with torch.no_grad():
        cases = [
            (fast(plain), x, plain(x)),
            (fast(plain, "gelu"), x, F.gelu(plain(x))),
            (fast(plain, "relu"), x, F.relu(plain(x))),
            (fast(plain), x[0], plain(x[0])),  # 2-D input
        ]
        for layer, inputs, expected in cases:
            assert ran_onednn(lambda: layer(inputs))
            actual = layer(inputs)
            assert actual.shape == expected.shape and actual.dtype == torch.float32
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert set(fast(plain, "gelu").state_dict()) == {"weight", "bias"}


def test_pytorch_kernels_wherever_onednn_does_not_apply(layer_and_inputs):
    plain, x = layer_and_inputs
    layer = fast(plain, "gelu")
    # autograd: training keeps PyTorch's kernels, and gradients flow
    assert not ran_onednn(lambda: layer(x))
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert not ran_onednn(lambda: layer.double()(x.double()))
        layer.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ran_onednn(lambda: layer(x))
            assert layer(x).dtype == torch.bfloat16
        with kernels.disabled("onednn"):
            assert not ran_onednn(lambda: layer(x))
            torch.testing.assert_close(layer(x), F.gelu(plain(x)), rtol=1e-6, atol=1e-6)
        assert ran_onednn(lambda: layer(x))


def test_flop_counter_counts_the_onednn_products(layer_and_inputs):
    plain, x = layer_and_inputs
    layers = [fast(plain), fast(plain, "gelu")]
    counts = []
    for enabled in (True, False):
        kernels.enabled["onednn"] = enabled
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                for layer in layers:
                    layer(x)
            counts.append(counter.get_total_flops())
        finally:
            kernels.enabled["onednn"] = True
    assert counts[0] == counts[1] == 2 * 2 * 2 * 37 * 48 * 96


@pytest.mark.parametrize("hidden_act", ["gelu", "relu"])
def test_transformer_layer_eval_path_equals_the_training_path(hidden_act):
    """One forward body: in eval mode the products run through oneDNN (exact GELU fused into fc1); with dropout and
    stochastic depth at zero the training-mode computation (PyTorch's kernels) is the same function."""
    torch.manual_seed(0)
    config = SegmenterConfig(hidden_size=64, num_attention_heads=4)
    layer = TransformerLayer(config, 64, 4, 256, 1e-6, hidden_act=hidden_act)
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        layer.eval()
        assert ran_onednn(lambda: layer(x))
        fused, _ = layer(x)
        layer.train()
        reference, _ = layer(x)
        layer.eval()
        try:
            kernels.enabled["onednn"] = False
            assert not ran_onednn(lambda: layer(x))
            unfused, _ = layer(x)
        finally:
            kernels.enabled["onednn"] = True
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unfused, reference, rtol=1e-6, atol=1e-6)
    layer.eval()
    output, weights = layer(x, output_attentions=True)  # autograd on in eval mode: PyTorch's kernels
    torch.testing.assert_close(output.detach(), reference, rtol=1e-5, atol=1e-5)
    assert weights.shape == (2, 4, 50, 50)


def test_segformer_layer_eval_path_equals_the_training_path():
    from hf_segmodels import SegformerConfig
    from hf_segmodels.segformer.modeling_segformer import SegformerLayer

    torch.manual_seed(0)
    config = SegformerConfig(hidden_sizes=[32, 64, 96, 128], num_attention_heads=[1, 2, 4, 8], sr_ratios=[8, 4, 2, 1])
    for stage in (1, 3):  # spatially reduced keys / full attention
        layer = SegformerLayer(config, stage, drop_path_rate=0.0)
        x = torch.randn(2, 8 * 12, config.hidden_sizes[stage])
        with torch.no_grad():
            layer.eval()
            assert ran_onednn(lambda: layer(x, (8, 12)))
            fused, _ = layer(x, (8, 12))
            layer.train()
            reference, _ = layer(x, (8, 12))
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_the_faster_kernel_is_measured_once_per_shape(layer_and_inputs, monkeypatch):
    plain, x = layer_and_inputs
    monkeypatch.undo()  # the real measurement
    layer = fast(plain, "gelu")
    key = (2 * 37, 48, 96, "gelu", torch.get_num_threads())
    onednn._FASTER.pop(key, None)
    with torch.no_grad():  # plain eager inference: PyTorch's kernel, nothing measured
        monkeypatch.setattr(onednn, "measuring", False)
        assert not ran_onednn(lambda: layer(x)) and key not in onednn.choices()
    monkeypatch.setattr(onednn, "measuring", True)  # the fastest path
    monkeypatch.setattr(onednn, "MIN_MEASURED_MACS", 1)  # (the fixture's product is too small to be measured)
    onednn._FASTER.pop(key, None)
    with torch.no_grad():
        expected = F.gelu(plain(x))
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        assert key in onednn.choices()
        for faster in (True, False):  # the remembered choice is the kernel that runs
            monkeypatch.setitem(onednn._FASTER, key, faster)
            assert ran_onednn(lambda: layer(x)) is faster
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(onednn, "MIN_MEASURED_MACS", 2 * 37 * 48 * 96 + 1)  # small products: PyTorch's, unmeasured
    onednn._FASTER.pop(key, None)
    with torch.no_grad():
        assert not ran_onednn(lambda: layer(x)) and key not in onednn.choices()


def test_depthwise_convolution_with_fused_gelu_equals_pytorch():
    """`onednn.Conv2d(..., activation="gelu")` (SegFormer's Mix-FFN): on the oneDNN path the GELU is fused into the
    depthwise conv, same numbers and memory format as PyTorch's conv + GELU; PyTorch's path with autograd, for other
    activations and while a graph is traced. Same state-dict keys as `nn.Conv2d`."""
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(24, 24, 3, padding=1, groups=24)
    layer = onednn.Conv2d(24, 24, 3, padding=1, groups=24, activation="gelu")
    layer.load_state_dict(plain.state_dict())
    assert list(layer.state_dict()) == list(plain.state_dict())
    x = torch.randn(2, 24, 9, 13).contiguous(memory_format=torch.channels_last)

    def ran_fused(function) -> bool:
        with OpRecorder() as recorder:
            function()
        return "mkldnn::_convolution_pointwise" in recorder.names

    with torch.no_grad():
        expected = F.gelu(plain(x))
        assert ran_fused(lambda: layer(x))
        fused = layer(x)
        traced = torch.jit.trace(layer, x, check_trace=False)
        assert "mkldnn" not in str(traced.inlined_graph)
    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-5)
    with torch.enable_grad():
        leaf = x.clone().requires_grad_()
        assert not ran_fused(lambda: layer(leaf))
    relu = onednn.Conv2d(24, 24, 3, padding=1, groups=24, activation="relu")
    relu.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert not ran_fused(lambda: relu(x))
        torch.testing.assert_close(relu(x), F.relu(plain(x)), rtol=0, atol=0)
        with kernels.disabled("onednn"):
            assert not ran_fused(lambda: layer(x))


def test_kernel_times_are_interleaved_and_the_best_of_each_is_kept(monkeypatch):
    """The two kernels are timed in turn (a burst of load elsewhere slows both alike) and each keeps its best time."""
    calls, durations = [], iter([5.0, 2.0, 1.0, 2.0, 3.0, 2.5])  # timed calls: A, B, A, B, A, B
    now = [0.0]

    def clock():
        return now[0]

    def timed(name):
        def function():
            calls.append(name)
            if len(calls) > 2:  # (the warm-up calls are not timed)
                now[0] += next(durations)
        return function

    monkeypatch.setattr(onednn.time, "perf_counter", clock)
    assert onednn._best_times((timed("A"), timed("B"))) == [1.0, 2.0]
    assert calls == ["A", "B"] * 4
