"""Tiny MaskFormer configurations shared by the MaskFormer tests (no tests here)."""

import torch
from transformers import DetrConfig, MaskFormerConfig as TransformersMaskFormerConfig
from transformers import MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

STAGES = ["stage1", "stage2", "stage3", "stage4"]
NUM_LABELS = 5


def tiny_backbone(kind: str):
    if kind == "resnet":
        return ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 2, 1, 1], out_features=STAGES)
    return SwinConfig(
        embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=64, out_features=STAGES
    )


def tiny_decoder(num_queries: int = 8):
    return DetrConfig(
        d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=64, num_queries=num_queries,
        use_timm_backbone=False,
    )


def tiny_transformers_model(kind: str, seed: int = 0) -> MaskFormerForInstanceSegmentation:
    """A randomly initialised transformers MaskFormer with non-trivial norms / biases (eval mode)."""
    torch.manual_seed(seed)
    config = TransformersMaskFormerConfig(
        backbone_config=tiny_backbone(kind), decoder_config=tiny_decoder(), fpn_feature_size=32, mask_feature_size=32,
        num_labels=NUM_LABELS,
    )
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
