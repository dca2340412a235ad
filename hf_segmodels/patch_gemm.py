"""A convolution over non-overlapping patches (kernel = stride, no padding) as one matrix product, for CPU inference.

SegFormer's spatial reduction (kernel = stride = 8, 4, 2 in stages 1-3) is such a convolution on a channels-last map.
As a matrix product it is: the tokens of each patch side by side (one copy of the input, cropped to whole patches as
the convolution floors odd sizes), times the weight as a (C_out, k * k * C_in) matrix, which runs closer to the
matmul peak than PyTorch's (oneDNN's) convolution for these shapes (`benchmarks/profile_cpu.py`). The same numbers up
to float rounding (a different summation order). Used only where it can be:
CPU, no autograd on the input or the weight, no autocast, not while a graph is captured (`kernels.active`); the
weight as a matrix is remembered while it is unchanged (`winograd.cached`). Switched with the other fast kernels
(`kernels.enabled["patch_gemm"]`).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import active as kernel_active, cpu_inference
from .winograd import cached


class PatchConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters and state-dict keys) that runs as one matrix product over the patches when its
    kernel equals its stride, without padding, dilation or groups, on a channels-last CPU input in inference; as
    `nn.Conv2d` otherwise. Input (B, C_in, H, W) -> (B, C_out, H // k, W // k) (channels-last on the product path)."""

    def _as_product(self, x: torch.Tensor) -> bool:
        return (
            kernel_active("patch_gemm")
            and self.stride == self.kernel_size
            and self.padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and x.dim() == 4
            and cpu_inference(x, self.weight)
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[-2] >= self.kernel_size[0]
            and x.shape[-1] >= self.kernel_size[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._as_product(x):
            return super().forward(x)
        batch, channels = x.shape[:2]
        (kernel_h, kernel_w), (height, width) = self.kernel_size, (x.shape[-2] // self.kernel_size[0],
                                                                   x.shape[-1] // self.kernel_size[1])  # fmt: skip
        grid = x.permute(0, 2, 3, 1)[:, : height * kernel_h, : width * kernel_w]  # (B, H, W, C_in) view
        patches = grid.reshape(batch, height, kernel_h, width, kernel_w, channels).transpose(2, 3)
        patches = patches.reshape(batch, height * width, kernel_h * kernel_w * channels)  # (the one copy)
        matrix = cached(self, lambda: self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1), self.weight)
        return F.linear(patches, matrix, self.bias).view(batch, height, width, -1).permute(0, 3, 1, 2)


__all__ = ["PatchConv2d"]
