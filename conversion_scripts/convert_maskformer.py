#!/usr/bin/env python
"""Convert a MaskFormer checkpoint into an hf_segmodels model directory.

    python conversion_scripts/convert_maskformer.py --checkpoint model_final_xxx.pkl --output_dir DIR [--config overrides.json]
    python conversion_scripts/convert_maskformer.py --source transformers --checkpoint HF_MODEL_DIR --output_dir DIR \
        [--model_card] [--push_to_hub ORG/NAME]

`--source original` (default) reads a detectron2 checkpoint of facebookresearch/MaskFormer (`.pkl` of NumPy arrays,
or `.pth`); the architecture is read from the weights, `--config` optionally names a JSON file of MaskFormerConfig
fields to override (e.g. `{"id2label": {...}}`). `--source transformers` reads a directory saved by transformers'
`MaskFormerForInstanceSegmentation` (the facebook/maskformer-* Hub layout; `--config` is not needed). The key
mapping is documented in `hf_segmodels/maskformer/convert_maskformer.py`. The output holds config.json,
model.safetensors, preprocessor_config.json (and README.md with --model_card) and loads with
`AutoModelForUniversalSegmentation.from_pretrained(DIR)` (or `AutoModelForSemanticSegmentation`) after
`import hf_segmodels`.
"""

from hf_segmodels.conversion_utils import run_conversion_cli
from hf_segmodels.maskformer.convert_maskformer import convert_original_checkpoint, convert_transformers_checkpoint


def convert(args):
    if args.source == "transformers":
        return convert_transformers_checkpoint(
            args.config or args.checkpoint, allow_unsafe_pickle=args.allow_unsafe_pickle
        )
    return convert_original_checkpoint(args.checkpoint, args.config, allow_unsafe_pickle=args.allow_unsafe_pickle)


def main(argv=None):
    return run_conversion_cli("maskformer", ("original", "transformers"), convert, argv)


if __name__ == "__main__":
    main()
