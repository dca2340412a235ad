"""The tests' single entry for tiny models and shared helpers (no tests here).

The tiny configs themselves are defined once, in the package (`hf_segmodels.testing_utils`, also the `tiny` preset of
`examples/train.py`); this module re-exports them and adds what only tests need: image processors for the tiny
models, transformers' own tiny MaskFormer (the reference of our MaskFormer and of its converter), parameter
perturbations that make wrong mappings or foldings visible, and a subprocess in which `hf_segmodels` cannot be
imported.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from hf_segmodels.testing_utils import (  # noqa: F401  (re-exported)
    ARCHITECTURES,
    MASKFORMER_STAGES as STAGES,
    model_class,
    naive_sliding_window,
    tiny_config,
    tiny_maskformer_backbone,
    tiny_maskformer_decoder,
    tiny_model,
)

NUM_LABELS = 5  # classes of the tiny MaskFormers compared with transformers' MaskFormer
# A tiny ResNet backbone (`tiny_maskformer_backbone(**WIDE_RESNET)`) whose second stage, 128 channels, is wide enough
# for Winograd (eager and in exported graphs)
WIDE_RESNET = dict(layer_type="basic", hidden_sizes=[16, 128, 32, 32], depths=[1, 2, 1, 1])


def tiny_image_processor(architecture: str, **kwargs):
    """The image processor of `architecture` at the tiny models' size (32 x 32 for the ViTs, 64 x 64 otherwise)."""
    from hf_segmodels import (
        MaskFormerImageProcessor,
        SegformerImageProcessor,
        SegmenterImageProcessor,
        SetrImageProcessor,
    )

    classes = {"segformer": SegformerImageProcessor, "segmenter": SegmenterImageProcessor, "setr": SetrImageProcessor,
               "maskformer": MaskFormerImageProcessor}  # fmt: skip
    side = 32 if architecture in ("segmenter", "setr") else 64
    return classes[architecture](**{"size": {"height": side, "width": side}, **kwargs})


def transformers_vit_config(config, config_class=None, **overrides):
    """transformers' `ViTConfig` (or `config_class`, e.g. `DeiTConfig`) with the encoder sizes of our Segmenter / SETR
    config `config`: the reference encoder of the same shape."""
    from transformers import ViTConfig

    fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
              "patch_size")  # fmt: skip
    return (config_class or ViTConfig)(**{name: getattr(config, name) for name in fields}, **overrides)


def tiny_transformers_model(kind: str, seed: int = 0):
    """transformers' own `MaskFormerForInstanceSegmentation` on the tiny backbone (`kind`: "resnet" / "swin") and
    decoder, randomly initialised with non-trivial norms / biases (`perturb_`), in eval mode."""
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

    torch.manual_seed(seed)
    config = MaskFormerConfig(
        backbone_config=tiny_maskformer_backbone(kind), decoder_config=tiny_maskformer_decoder(), fpn_feature_size=32,
        mask_feature_size=32, num_labels=NUM_LABELS,
    )  # fmt: skip
    model = MaskFormerForInstanceSegmentation(config).eval()
    return perturb_(model, seed + 1)


def perturb_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturbs every float parameter and buffer in place (norms and biases included, running variances positive)
    so that a wrong mapping (e.g. swapped norms) cannot go unnoticed; returns the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and "relative_position_index" not in name and "empty_weight" not in name:
                if name.endswith("running_var"):
                    tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
                elif "class_weights" not in name:
                    tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
    return model


def randomize_batch_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that folding them is actually exercised; returns
    the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.normal_(1, 0.2, generator=generator)
                module.bias.normal_(0, 0.2, generator=generator)
    return model


# Prepended to the code of `run_without_package`: any import of hf_segmodels fails in that process.
BLOCK_PACKAGE = """
import sys

class _BlockHfSegmodels:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_segmodels" or name.startswith("hf_segmodels."):
            raise ImportError("hf_segmodels is hidden in this process")

sys.meta_path.insert(0, _BlockHfSegmodels())
"""


def run_without_package(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python process where `hf_segmodels` cannot be imported (cwd: a temporary folder, so the
    checkout itself is not importable either)."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip
