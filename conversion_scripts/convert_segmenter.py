#!/usr/bin/env python
"""Convert a Segmenter checkpoint into an hf_segmodels model directory.

    python conversion_scripts/convert_segmenter.py --checkpoint checkpoint.pth --config variant.yml --output_dir DIR
    python conversion_scripts/convert_segmenter.py --source mmseg --checkpoint segmenter.pth --config segmenter.py \
        --output_dir DIR [--model_card] [--push_to_hub ORG/NAME]

`--source original` (default) reads rstrudel/segmenter's release (`checkpoint.pth` + `variant.yml` of the run);
`--source mmseg` reads mmsegmentation 1.x's Segmenter checkpoints with their `.py` config. The output directory
holds config.json, model.safetensors, preprocessor_config.json (and README.md with --model_card) and loads with
`AutoModelForSemanticSegmentation.from_pretrained(DIR)` after `import hf_segmodels`.
"""

from hf_segmodels.conversion_utils import run_conversion_cli
from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint


def convert(args):
    return convert_segmenter_checkpoint(
        args.checkpoint, args.config, source=args.source, allow_unsafe_pickle=args.allow_unsafe_pickle
    )


def main(argv=None):
    return run_conversion_cli("segmenter", ("original", "mmseg"), convert, argv)


if __name__ == "__main__":
    main()
