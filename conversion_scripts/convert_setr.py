#!/usr/bin/env python
"""Convert a SETR checkpoint into an hf_segmodels model directory.

    python conversion_scripts/convert_setr.py --checkpoint SETR_PUP_768x768_40k_cityscapes_bs_8.pth \
        --config SETR_PUP_768x768_40k_cityscapes_bs_8.py --output_dir DIR
    python conversion_scripts/convert_setr.py --source mmseg --checkpoint setr_pup.pth --config setr_pup.py \
        --output_dir DIR [--drop_auxiliary_heads] [--model_card] [--push_to_hub ORG/NAME]

`--source original` (default) reads the authors' fudan-zvg/SETR release (mmseg-0.x `state_dict` with their
`VisionTransformer` / `VIT_MLA` backbone and `VisionTransformerUpHead` / `VIT_MLAHead` keys) with the model's `.py`
config (a flattened dump, e.g. from `mmcv.Config.fromfile(...).pretty_text`); `--source mmseg` reads
mmsegmentation 1.x's SETR checkpoints with their (flattened) `.py` config. The auxiliary heads are converted too
(they are used by the training loss when fine-tuning); `--drop_auxiliary_heads` leaves them out. The output
directory holds config.json, model.safetensors, preprocessor_config.json (and README.md with --model_card) and loads
with `AutoModelForSemanticSegmentation.from_pretrained(DIR)` after `import hf_segmodels`. Nothing is written when
the conversion fails.
"""

from hf_segmodels.conversion_utils import run_conversion_cli
from hf_segmodels.setr.convert_setr import convert_setr_checkpoint


def add_arguments(parser):
    parser.add_argument(
        "--drop_auxiliary_heads",
        action="store_true",
        help="Do not convert the auxiliary heads (they only serve the training loss).",
    )


def convert(args):
    return convert_setr_checkpoint(
        args.checkpoint,
        args.config,
        source=args.source,
        allow_unsafe_pickle=args.allow_unsafe_pickle,
        keep_auxiliary_heads=not args.drop_auxiliary_heads,
    )


def card_kwargs(args):
    return {
        "protocol": "Sliding-window inference with the training crop as window, as the released SETR configs "
        "(`hf_segmodels.infer_logits(model, pixel_values, window=crop, stride=stride)`), on images resized by the "
        "image processor.",
    }


def main(argv=None):
    return run_conversion_cli("setr", ("original", "mmseg"), convert, argv, add_arguments, card_kwargs)


if __name__ == "__main__":
    main()
