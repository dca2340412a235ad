"""The benchmarks' own measuring helpers (`benchmarks/`): what their tables are computed from must itself be right."""

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
