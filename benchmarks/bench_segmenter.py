#!/usr/bin/env python
"""Segmenter-B/16 speed on this CPU against transformers' ViTModel (sdpa) of identical size and weights.

Prints, measured in one run at 512x512 batch 1 (fp32, no grad):
  - our encoder time / transformers ViTModel time (target <= 1.0: not slower on the same work),
  - the whole Segmenter-B/16 (mask transformer) time and the decoder's share,
  - the max abs difference between the two encoders' outputs (same weights).
Timings interleave the two models (median of --repeats runs each) so machine noise hits both alike.

    python benchmarks/bench_segmenter.py [--repeats 10] [--size 512]
"""

import argparse

import torch
from transformers import ViTConfig, ViTModel

from hf_segmodels import SegmenterConfig, SegmenterForSemanticSegmentation
from hf_segmodels.pretrained import load_pretrained_vit
from timing import interleaved_medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    vit, model = build_models(args.size)

    pixel_values = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        difference = (model.encoder(pixel_values).last_hidden_state - vit(pixel_values).last_hidden_state).abs().max()
        medians = interleaved_medians(
            {
                "transformers ViTModel (sdpa)": lambda: vit(pixel_values),
                "our ViT encoder": lambda: model.encoder(pixel_values),
                "our Segmenter-B/16 mask (whole model)": lambda: model(pixel_values),
            },
            args.repeats,
        )
    print(f"Segmenter-B/16 at {args.size}x{args.size}, batch 1, fp32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for name, seconds in medians.items():
        print(f"  {name:<40} {seconds * 1000:8.1f} ms")
    peer = medians["transformers ViTModel (sdpa)"]
    encoder = medians["our ViT encoder"]
    whole = medians["our Segmenter-B/16 mask (whole model)"]
    print(f"  encoder ratio ours / transformers: {encoder / peer:.3f}  (target <= 1.0)")
    print(f"  decoder share of the whole model:  {(whole - encoder) / whole:.1%}")
    print(f"  max abs diff of encoder outputs:   {difference.item():.2e}")


def build_models(size: int) -> tuple[ViTModel, SegmenterForSemanticSegmentation]:
    """transformers' ViT-B/16 (sdpa, no pooler) and our Segmenter-B/16 mask (ADE20K) whose encoder has its weights."""
    torch.manual_seed(0)
    vit = ViTModel(
        ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                  image_size=size, patch_size=16, layer_norm_eps=1e-6, attn_implementation="sdpa"),
        add_pooling_layer=False,
    ).eval()
    assert vit.config._attn_implementation == "sdpa"
    config = SegmenterConfig.from_preset("segmenter-b16-ade", image_size=size, layer_norm_eps=1e-6,
                                         attn_implementation="sdpa")
    model = SegmenterForSemanticSegmentation(config).eval()
    load_pretrained_vit(model.encoder, _timm_state_dict(vit))  # identical weights, via the timm-layout loader
    return vit, model


def _timm_state_dict(vit: ViTModel) -> dict:
    """transformers ViTModel weights in timm's layout (fused qkv), for loading into our encoder."""
    state = vit.state_dict()
    converted = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    for i in range(vit.config.num_hidden_layers):
        prefix = f"layers.{i}."
        for kind in ("weight", "bias"):
            converted[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [state[f"{prefix}attention.{p}_proj.{kind}"] for p in ("q", "k", "v")]
            )
            converted[f"blocks.{i}.attn.proj.{kind}"] = state[f"{prefix}attention.o_proj.{kind}"]
            converted[f"blocks.{i}.norm1.{kind}"] = state[f"{prefix}layernorm_before.{kind}"]
            converted[f"blocks.{i}.norm2.{kind}"] = state[f"{prefix}layernorm_after.{kind}"]
            converted[f"blocks.{i}.mlp.fc1.{kind}"] = state[f"{prefix}mlp.fc1.{kind}"]
            converted[f"blocks.{i}.mlp.fc2.{kind}"] = state[f"{prefix}mlp.fc2.{kind}"]
    return converted


if __name__ == "__main__":
    main()
