"""Linear layers through oneDNN with the activation or the residual addition fused, for CPU inference.

PyTorch runs `nn.Linear` on the CPU through MKL's sgemm, then the activation and the residual addition as separate
passes over the output. oneDNN's matrix product (the kernel `torch.compile`'s CPU backend uses, exposed eagerly as
`torch.ops.mkldnn._linear_pointwise`) measured 5-10% faster than sgemm on the token-by-channel products of a ViT
(e.g. 1025 x 768 @ 768 x 3072 at one thread: 44.7 vs 49.4 ms) and applies an exact (erf) GELU or adds the residual
while the output is still in cache. The result is the same product in float32 (no reduced-precision modes: errors
~1e-6 relative, the size of a different summation order). Used only where it can be: CPU float32 tensors, no autograd
(training keeps PyTorch's kernels and their backward), no autocast, not while `torch.compile` traces (the compiler
fuses by itself) nor while a graph is exported or traced. Switched off with the other fast kernels in
`hf_segmodels.kernels` (`kernels.enabled["onednn"] = False`).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import flop_registry, register_flop_formula

from .kernels import active as kernel_active

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


def usable(x: torch.Tensor, layer: nn.Linear) -> bool:
    """Whether `layer(x)` may run through oneDNN: enabled, CPU float32 inference outside autograd, autocast and
    graph capture (compile, export, tracing)."""
    return (
        _AVAILABLE
        and kernel_active("onednn")
        and x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for `x` (..., in_features) -> (..., out_features)."""
    if usable(x, layer):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)


def linear_gelu(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`F.gelu(layer(x))` (exact GELU), the activation applied inside the product's output loop when `usable`."""
    if usable(x, layer):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu", [], "none")
    return F.gelu(layer(x))


def linear_add(layer: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`residual + layer(x)`, the addition done inside the product's output loop when `usable`; `residual` has the
    output's shape."""
    if usable(x, layer) and residual.dtype == torch.float32 and residual.shape[-1] == layer.out_features:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, layer.weight, layer.bias, "add")
    return residual + layer(x)


def project(layer: nn.Linear, x: torch.Tensor, dropout: nn.Module, residual: torch.Tensor | None = None):
    """The output projection of an attention or feed-forward block: `dropout(layer(x))`, plus `residual` when given.
    Outside training (`dropout` in eval mode, hence the identity) the addition is fused into the product."""
    if residual is None:
        return dropout(linear(layer, x))
    if dropout.training:
        return residual + dropout(layer(x))
    return linear_add(layer, x, residual)
