"""A Linear layer and a convolution through oneDNN with the activation fused, for CPU inference.

PyTorch runs `nn.Linear` on the CPU through MKL's sgemm, then the activation as a separate pass over the output.
oneDNN's matrix product (the kernel `torch.compile`'s CPU backend uses, exposed eagerly as
`torch.ops.mkldnn._linear_pointwise`) applies an exact (erf) GELU while the output is still in cache and is faster
than sgemm on some CPUs and slower on others. Plain eager inference therefore keeps PyTorch's kernel (deterministic);
`hf_segmodels.fastest(model)` measures each product shape once on the running CPU and uses the faster kernel
(`onednn_is_faster`). The result is the same product in float32 (no reduced-precision modes: errors ~1e-6 relative,
the size of a different summation order). Used only where it can be: CPU float32 tensors, no autograd (training keeps
PyTorch's kernels and their backward), no autocast, not while `torch.compile` traces (the compiler fuses by itself)
nor while a graph is exported or traced. Switched off with the other fast kernels in
`hf_segmodels.kernels` (`kernels.enabled["onednn"] = False`).

`Conv2d` does the same for a convolution followed by its exact GELU (SegFormer's Mix-FFN depthwise 3x3 conv):
PyTorch's CPU convolution is oneDNN's already, `torch.ops.mkldnn._convolution_pointwise` adds the GELU to its output
loop instead of a second pass over a multi-megabyte map; chosen per shape under `fastest()` like the products.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula
from transformers.activations import ACT2FN

from .kernels import active as kernel_active, cpu_inference

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


if _AVAILABLE and torch.ops.mkldnn._linear_pointwise not in flop_registry:
    # `torch.utils.flop_counter.FlopCounterMode` counts these products as it counts `addmm` (the benchmarks' FLOP
    # counts, and anyone else's, stay right with the oneDNN path on). Registered once per process: copies of this
    # module shipped as remote code with several models may be imported side by side.
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _linear_pointwise_flops(x_shape, *args, **kwargs) -> int:
        # default overload: (X, W, B, attr, scalars, algorithm); binary: (X, other, W, B, attr)
        weight_shape = args[0] if isinstance(args[2], str) else args[1]
        rows = 1
        for size in x_shape[:-1]:
            rows *= size
        return 2 * rows * weight_shape[0] * weight_shape[1]


def usable(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether `layer(x)` may run through oneDNN: enabled, CPU float32 inference outside autograd, autocast and
    graph capture (compile, export, tracing)."""
    return (
        _AVAILABLE
        and kernel_active("onednn")
        and layer.weight.dtype == torch.float32
        and cpu_inference(x, layer.weight)
    )


# Per product shape (rows, in_features, out_features, activation, threads): whether oneDNN was measured faster than
# PyTorch's own kernels on this CPU (which one wins depends on the CPU: e.g. MKL's sgemm wins for ViT-sized products
# on some AMD CPUs, oneDNN on some Intel ones). Filled on first use of a shape; `choices()` shows it.
_FASTER: dict[tuple, bool] = {}


def _best_times(functions, rounds: int = 3) -> list[float]:
    """The best of `rounds` wall-clock times of each function, timed in turn (A, B, A, B, ...) after one warm-up call
    each (first-touch of the output, oneDNN's primitive cache), so that a burst of load from elsewhere on the machine
    slows both alike instead of deciding the comparison."""
    for function in functions:
        function()
    best = [float("inf")] * len(functions)
    for _ in range(rounds):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _onednn_forward(layer: "Linear", x: torch.Tensor) -> torch.Tensor:
    if layer.activation_name == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu", [], "none")
    output = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return output if layer.activation is None else layer.activation(output)


def _pytorch_forward(layer: "Linear", x: torch.Tensor) -> torch.Tensor:
    output = F.linear(x, layer.weight, layer.bias)
    return output if layer.activation is None else layer.activation(output)


# Whether products are measured at all: off by default, so that eager inference is deterministic (PyTorch's kernels);
# `hf_segmodels.fastest(model)` turns it on (`measure_kernels()`), and its outputs may then differ from another
# process's at float-rounding level (~1e-6), where the two kernels' times are close.
measuring = False


def measure_kernels(enable: bool = True) -> None:
    """Lets `Linear` measure oneDNN against PyTorch's kernel per product shape and use the faster (the fastest path)."""
    global measuring
    measuring = enable


# oneDNN is chosen only when clearly faster: its time under this fraction of PyTorch's. Kernels whose times are close
# would otherwise be chosen by timing noise, and two processes could compute slightly different numbers (~1e-6).
CLEAR_MARGIN = 0.85

# Products smaller than this many multiply-adds always run PyTorch's kernel: too short to time reliably, and too
# cheap for the choice to matter.
MIN_MEASURED_MACS = 1 << 22


def onednn_is_faster(layer: "Linear | Conv2d", x: torch.Tensor) -> bool:
    """Whether oneDNN computes `layer(x)` clearly faster (`CLEAR_MARGIN`) than PyTorch's kernels on this CPU, measured
    once per shape (and thread count) and remembered for the process; False unless `measuring` (the fastest path) and
    for work under `MIN_MEASURED_MACS` multiply-adds."""
    if not measuring:
        return False
    if isinstance(layer, Conv2d):
        macs = x.numel() * layer.weight[0].numel() * layer.out_channels // layer.in_channels
        key = ("conv", tuple(x.shape), tuple(layer.weight.shape), layer.stride, layer.padding, layer.groups,
               layer.activation_name, torch.get_num_threads())  # fmt: skip
    else:
        rows = x.numel() // x.shape[-1]
        macs = rows * layer.in_features * layer.out_features
        key = (rows, layer.in_features, layer.out_features, layer.activation_name, torch.get_num_threads())
    if macs < MIN_MEASURED_MACS:
        return False
    if key not in _FASTER:
        onednn_seconds, pytorch_seconds = _best_times(
            (lambda: layer._onednn_forward(x), lambda: layer._pytorch_forward(x))
        )
        _FASTER[key] = onednn_seconds < CLEAR_MARGIN * pytorch_seconds
    return _FASTER[key]


def choices() -> dict[tuple, bool]:
    """The measured choices so far: `{(rows, in_features, out_features, activation, threads): oneDNN faster}`."""
    return dict(_FASTER)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) that runs through oneDNN when `usable` and measured faster
    than PyTorch's kernels for the product's shape on this CPU (`onednn_is_faster`), optionally followed by an
    activation: `activation="gelu"` (exact, erf) is applied inside the product's output loop on the oneDNN path; any
    other `ACT2FN` name is applied after the product. Input (..., in_features) -> (..., out_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None, **kwargs):
        super().__init__(in_features, out_features, bias, **kwargs)
        self.activation_name = activation
        self.activation = ACT2FN[activation] if activation is not None else None

    _onednn_forward = _onednn_forward
    _pytorch_forward = _pytorch_forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if usable(x, self) and onednn_is_faster(self, x):
            return _onednn_forward(self, x)
        return _pytorch_forward(self, x)

    def extra_repr(self) -> str:
        activation = f", activation={self.activation_name}" if self.activation_name is not None else ""
        return super().extra_repr() + activation


_CONV_AVAILABLE = _AVAILABLE and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, same state-dict keys) followed by an activation (`ACT2FN` name, or None): on the
    oneDNN path (`usable`, an exact GELU, zero padding, measured faster for the shape on this CPU) the GELU is applied
    in the convolution's output loop. Input (B, C_in, H, W) -> (B, C_out, H', W'), memory format kept."""

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation_name = activation
        self.activation = ACT2FN[activation] if activation is not None else None

    def _onednn_forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "gelu", [], "none",
        )  # fmt: skip

    def _pytorch_forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self._conv_forward(x, self.weight, self.bias)
        return output if self.activation is None else self.activation(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fusable = (
            _CONV_AVAILABLE and self.activation_name == "gelu" and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple) and x.dim() == 4
        )  # fmt: skip
        if fusable and usable(x, self) and onednn_is_faster(self, x):
            return self._onednn_forward(x)
        return self._pytorch_forward(x)

    def extra_repr(self) -> str:
        activation = f", activation={self.activation_name}" if self.activation_name is not None else ""
        return super().extra_repr() + activation


__all__ = ["Conv2d", "Linear", "choices", "measure_kernels", "onednn_is_faster", "usable"]
