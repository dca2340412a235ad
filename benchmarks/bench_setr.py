#!/usr/bin/env python
"""SETR-PUP T-Large speed on this CPU against transformers' ViTModel (sdpa) of identical size and weights.

Prints, measured in one run at 512x512 batch 1 (fp32, no grad):
  - our encoder time / transformers ViTModel time (target <= 1.0: not slower on the same work; ViTModel also runs
    its final LayerNorm, which SETR's encoder does not have: one LayerNorm over 1025 tokens, < 0.1% of the work),
  - the whole SETR-PUP (T-Large, the original release's heads, ADE20K: 150 classes) time and the decoder's share,
  - the max abs difference between the two encoders' last-layer outputs (same weights, before ViTModel's final norm).
Timings interleave the models (median of --repeats runs each) so machine noise hits them alike.

    python benchmarks/bench_setr.py [--repeats 5] [--size 512] [--implementation original|mmseg]
"""

import argparse
import tempfile

import torch
from transformers import ViTConfig, ViTModel

from hf_segmodels import SetrConfig, SetrForSemanticSegmentation
from hf_segmodels.pretrained import load_pretrained_vit
from timing import interleaved_medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--implementation", default="original", choices=("original", "mmseg"))
    args = parser.parse_args()
    vit, model = build_models(args.size, args.implementation)
    config = model.config

    pixel_values = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        ours = model.encoder(pixel_values).last_hidden_state
        theirs = vit(pixel_values, output_hidden_states=True).hidden_states[-1]
        difference = (ours - theirs).abs().max().item() if config.patch_embeddings_bias else float("nan")
        medians = interleaved_medians(
            {
                "transformers ViTModel (sdpa)": lambda: vit(pixel_values),
                "our ViT encoder": lambda: model.encoder(pixel_values),
                "our SETR-PUP T-Large (whole model)": lambda: model(pixel_values),
            },
            args.repeats,
        )
    print(f"SETR-PUP T-Large ({args.implementation} heads) at {args.size}x{args.size}, batch 1, fp32, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, seconds in medians.items():
        print(f"  {name:<40} {seconds * 1000:8.1f} ms")
    peer = medians["transformers ViTModel (sdpa)"]
    encoder = medians["our ViT encoder"]
    whole = medians["our SETR-PUP T-Large (whole model)"]
    print(f"  encoder ratio ours / transformers: {encoder / peer:.3f}  (target <= 1.0)")
    print(f"  decoder share of the whole model:  {(whole - encoder) / whole:.1%}")
    print(f"  max abs diff of encoder outputs:   {difference:.2e}")



def build_models(size: int, implementation: str = "original") -> tuple[ViTModel, SetrForSemanticSegmentation]:
    """transformers' ViT-L/16 (sdpa, no pooler) and our SETR-PUP T-Large (ADE20K) whose encoder has its weights (when
    the implementation's patch embedding has a bias, as ViTModel's has; otherwise the weights differ)."""
    torch.manual_seed(0)
    config = SetrConfig.from_preset("setr-pup-ade", implementation=implementation, image_size=size,
                                    attn_implementation="sdpa")
    vit = ViTModel(
        ViTConfig(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                  num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
                  image_size=size, patch_size=16, layer_norm_eps=1e-6, attn_implementation="sdpa"),
        add_pooling_layer=False,
    ).eval()
    assert vit.config._attn_implementation == "sdpa" and config._attn_implementation == "sdpa"
    model = SetrForSemanticSegmentation(config).eval()
    if config.patch_embeddings_bias:
        with tempfile.TemporaryDirectory() as directory:  # identical weights, through the transformers-dir loader
            vit.save_pretrained(directory)
            load_pretrained_vit(model.encoder, directory)
    return vit, model

if __name__ == "__main__":
    main()
