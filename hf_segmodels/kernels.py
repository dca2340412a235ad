"""The package's fast CPU inference kernels, switched in one place.

| name | what it does | where |
| --- | --- | --- |
| `onednn` | linear layers through oneDNN with GELU fused, under `hf_segmodels.fastest` where measured faster | `onednn.py`: ViT layers, MiT |
| `winograd` | wide 3x3 convolutions as Winograd F(4x4, 3x3), in exported graphs too | `winograd.py`: MaskFormer's pixel decoder and ResNet's stages 2-4, SETR's PUP / MLA heads |
| `folded_batch_norm` | BatchNorm folded into the preceding convolution of eval-mode ResNets | MaskFormer's ResNet backbones |
| `merged_decoder` | SegFormer's decoder with its fuse conv folded into per-stage matrices | SegFormer's decode head |
| `patch_gemm` | convolutions over non-overlapping patches (kernel = stride) as one matrix product | `patch_gemm.py`: MiT's spatial reduction |

Each gives the same numbers as PyTorch's own kernels up to float rounding, and each is used only where it can be
(CPU inference, see the modules). The kernels step aside by themselves while a graph is captured: under
`torch.compile` (the compiler fuses by itself), `torch.export`, `torch.onnx.export` and TorchScript tracing /
scripting, so exported graphs contain only standard operators. What can be written in standard operators stays:
`merged_decoder` under every capture (per-stage matrices, upsampling, additions; a runtime cannot find the folding by
itself: an exported SegFormer without it runs the concatenation and the 1x1 fuse convolution at 1/4 resolution, ~1.5x
the work of B0), and in exported graphs (not under `torch.compile` alone) `folded_batch_norm` (the runtimes compute the
folded weights once when they load the graph) and `winograd` in graph form (`winograd.conv3x3_graph`: grouped
convolutions, one batched MatMul and DepthToSpace, which ONNX Runtime runs faster than its own 3x3 convolution at 128+
channels, OpenVINO at 256+). Winograd needs float32: an export for another target (int8 quantisation of convolutions,
bf16 / fp16 inference, a GPU runtime) keeps plain convolutions with `python -m hf_segmodels.export ... --no_winograd`
or `with hf_segmodels.kernels.disabled("winograd"): ...` around the export.

Switches: `hf_segmodels.kernels.enabled["onednn"] = False` (one kernel), `with hf_segmodels.kernels.disabled(): ...`
(all, or the ones named, for a block), or the environment variable `HF_SEGMODELS_FAST_KERNELS` read at import:
`0` / `none` turns them all off, a comma-separated list of names keeps only those.
"""

import contextlib
import os

import torch

KERNELS = ("onednn", "winograd", "folded_batch_norm", "merged_decoder", "patch_gemm")
# Algebraic rewrites in standard operators, kept while a graph is captured.
GRAPH_REWRITES = ("merged_decoder",)
# Kept in exported graphs (ONNX, OpenVINO, torch.export), written in standard operators there, but not under
# torch.compile (inductor picks its own convolutions): the folded BatchNorms (a per-channel scale of the weights, which
# the runtimes compute once when they load the graph) and Winograd in graph form (`winograd.conv3x3_graph`).
EXPORT_REWRITES = ("folded_batch_norm", "winograd")
ENVIRONMENT_VARIABLE = "HF_SEGMODELS_FAST_KERNELS"


def _from_environment() -> dict[str, bool]:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if value in ("", "1", "all", "true"):
        return dict.fromkeys(KERNELS, True)
    if value in ("0", "none", "false"):
        return dict.fromkeys(KERNELS, False)
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(names - set(KERNELS))
    if unknown:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={value!r} names unknown kernels {unknown}; choose from {KERNELS}.")
    return {name: name in names for name in KERNELS}


enabled: dict[str, bool] = _from_environment()


def capturing() -> bool:
    """True while torch.compile, torch.export, torch.onnx.export or TorchScript capture a graph."""
    return torch.compiler.is_compiling() or exporting()


def exporting() -> bool:
    """True while a graph is captured for another runtime: torch.export (and the dynamo ONNX exporter built on it),
    the TorchScript ONNX exporter, TorchScript tracing / scripting; False under `torch.compile` alone."""
    return (
        torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def cpu_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a layer's forward on `x` with `weight` is CPU inference that a fast kernel may take over: `x` on the
    CPU, in `weight`'s dtype, no autograd through either, no CPU autocast (which would change the dtype)."""
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def active(name: str) -> bool:
    """Whether the kernel `name` is switched on and, unless it is one of `GRAPH_REWRITES` (or of `EXPORT_REWRITES`
    while exporting), no graph is being captured."""
    if not enabled[name]:
        return False
    return name in GRAPH_REWRITES or not capturing() or (name in EXPORT_REWRITES and exporting())


@contextlib.contextmanager
def disabled(*names: str):
    """Turns the named kernels (all when none is named) off inside the block, PyTorch's own kernels then run."""
    unknown = sorted(set(names) - set(KERNELS))
    if unknown:
        raise ValueError(f"Unknown kernels {unknown}; choose from {KERNELS}.")
    previous = dict(enabled)
    for name in names or KERNELS:
        enabled[name] = False
    try:
        yield
    finally:
        enabled.update(previous)


__all__ = [
    "ENVIRONMENT_VARIABLE", "EXPORT_REWRITES", "GRAPH_REWRITES", "KERNELS", "active", "capturing", "cpu_inference",
    "disabled", "enabled", "exporting",
]  # fmt: skip
