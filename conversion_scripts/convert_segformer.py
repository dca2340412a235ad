#!/usr/bin/env python
"""Convert a SegFormer checkpoint into an hf_segmodels model directory.

    python conversion_scripts/convert_segformer.py --checkpoint segformer.b0.512x512.ade.160k.pth \
        [--config segformer.b0.512x512.ade.160k.py] --output_dir DIR
    python conversion_scripts/convert_segformer.py --source mmseg --checkpoint segformer_mit-b0.pth \
        --config segformer_mit-b0_8xb2-160k_ade20k-512x512.py --output_dir DIR
    python conversion_scripts/convert_segformer.py --source transformers \
        --checkpoint ./segformer-b0-finetuned-ade-512-512 --output_dir DIR [--model_card] [--push_to_hub ORG/NAME]

`--source original` (default) reads NVlabs/SegFormer's release (`{'meta', 'state_dict'}`; `--config` is optional, the
hyper-parameters are read off the weights and the meta's embedded config); `--source mmseg` reads mmsegmentation
1.x's checkpoints with their `.py` config; `--source transformers` reads a folder with config.json and
model.safetensors / pytorch_model.bin (a Hub snapshot of `nvidia/segformer-*`). The output directory holds
config.json, model.safetensors, preprocessor_config.json (and README.md with --model_card) and loads with
`AutoModelForSemanticSegmentation.from_pretrained(DIR)` after `import hf_segmodels`.
"""

from hf_segmodels.conversion_utils import run_conversion_cli
from hf_segmodels.segformer.convert_segformer import SOURCES, convert_segformer_checkpoint


def convert(args):
    return convert_segformer_checkpoint(
        args.checkpoint, args.config, source=args.source, allow_unsafe_pickle=args.allow_unsafe_pickle
    )


def main(argv=None):
    return run_conversion_cli("segformer", SOURCES, convert, argv)


if __name__ == "__main__":
    main()
