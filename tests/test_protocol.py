"""Test protocols recorded in checkpoints (`config.test_protocol`): infer_logits and pipeline() follow them, every
zoo release's conversion records its original test settings, and images are resized like the original pipelines."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import hf_segmodels
from hf_segmodels.image_processing import opencv_bilinear_resize
from hf_segmodels.protocol import TestProtocol, get_test_protocol, protocol_from_original_test_cfg

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize("size", [(173, 260), (97, 146)])
@pytest.mark.parametrize(
    "processor_class",
    [hf_segmodels.SegmenterImageProcessor, hf_segmodels.SetrImageProcessor, hf_segmodels.SegformerImageProcessor],
)
def test_mmseg_processors_resize_like_opencv_on_a_photo(processor_class, size):
    """tests/data/rocket_crop_cv2_*.png are `cv2.resize(INTER_LINEAR)` (opencv-python-headless 5.0.0) of a crop of
    scikit-image's `rocket.jpg` (NASA, public domain): what mmsegmentation's test pipeline feeds the originals."""
    photo = PIL.Image.open(DATA / "rocket_crop.png")
    reference = np.asarray(PIL.Image.open(DATA / f"rocket_crop_cv2_{size[0]}x{size[1]}.png")).astype(np.int32)
    processor = processor_class(size={"height": size[0], "width": size[1]}, do_rescale=False, do_normalize=False,
                                size_divisor=None) if processor_class is hf_segmodels.SegformerImageProcessor else \
        processor_class(size={"height": size[0], "width": size[1]}, do_rescale=False, do_normalize=False)
    ours = processor(photo, return_tensors="np")["pixel_values"][0]
    difference = np.abs(np.moveaxis(ours, 0, -1).astype(np.int32) - reference)
    assert difference.max() <= 1
    # PIL's antialiasing bilinear filter, the resize used before, is far off when shrinking.
    pil = np.asarray(photo.resize(size[::-1], PIL.Image.BILINEAR)).astype(np.int32)
    assert np.abs(pil - reference).max() > 10


def test_opencv_resize_is_identity_at_the_same_size_and_handles_float_images():
    image = np.random.default_rng(0).integers(0, 256, (3, 20, 30), dtype=np.uint8)
    assert np.array_equal(opencv_bilinear_resize(image, (20, 30)), image)
    as_float = opencv_bilinear_resize(image.astype(np.float32), (11, 17))
    as_uint8 = opencv_bilinear_resize(image, (11, 17))
    assert as_float.dtype == np.float32 and np.abs(as_float - as_uint8).max() <= 1


def test_maskformer_keeps_pil_resize_as_detectron2():
    assert hf_segmodels.MaskFormerImageProcessor.resize_backend == "pil"


# ------------------------------------------------------------------------------------------------ the record
def test_protocol_round_trips_through_config_json(tmp_path):
    config = hf_segmodels.SegformerConfig(test_protocol={"mode": "slide", "window": 64, "stride": [48, 48],
                                                          "resize": {"shortest_edge": 96, "longest_edge": 384}})
    config.save_pretrained(tmp_path)
    loaded = get_test_protocol(hf_segmodels.SegformerConfig.from_pretrained(tmp_path))
    assert loaded == TestProtocol(mode="slide", window=(64, 64), stride=(48, 48),
                                  resize={"shortest_edge": 96, "longest_edge": 384})
    assert hf_segmodels.SegformerConfig().test_protocol is None
    for bad in ({"mode": "slide"}, {"mode": "whole", "window": 8, "stride": 8}, {"mode": "sliding"},
                {"mode": "slide", "window": 8, "stride": 16}, {"resize": {"width": 3}}, {"unknown": 1}):
        with pytest.raises(ValueError):
            hf_segmodels.SegformerConfig(test_protocol=bad)


def _expected_from_original(architecture: str, cfg: dict) -> dict:
    """The protocol a release's original test settings describe, spelled out independently of the package."""
    if architecture == "segmenter":
        window, stride = [cfg["window_size"]] * 2, [cfg["window_stride"]] * 2
        resize = {"shortest_edge": cfg["im_size"], "longest_edge": cfg["max_ratio"] * cfg["im_size"]}
    elif architecture == "maskformer":
        window = stride = None
        resize = {"shortest_edge": cfg["MIN_SIZE_TEST"], "longest_edge": cfg["MAX_SIZE_TEST"]}
    else:
        slide = cfg["test_cfg"]["mode"] == "slide"
        window, stride = (cfg["test_cfg"]["crop_size"], cfg["test_cfg"]["stride"]) if slide else (None, None)
        long, short = max(cfg["img_scale"]), min(cfg["img_scale"])
        resize = {"shortest_edge": max(short, cfg["min_short"])} if "min_short" in cfg else \
            {"shortest_edge": short, "longest_edge": long}
    return {"mode": "slide" if window else "whole", "window": window, "stride": stride, "resize": resize,
            "size_divisor": cfg.get("size_divisor"), "ms_scales": cfg.get("ms_ratios", []),
            "ms_flip": cfg.get("flip", False), "task": cfg.get("task", "semantic"), "source": cfg["source"]}


def test_every_zoo_release_records_its_original_test_settings():
    from hf_segmodels.cards.zoo import load_zoo, zoo_test_protocol

    zoo = load_zoo()
    for entry in zoo["models"]:
        cfg = entry["original_test_cfg"]
        assert cfg["source"].startswith("https://github.com/"), entry["name"]
        protocol = zoo_test_protocol(entry).to_dict()
        assert protocol == _expected_from_original(entry["architecture"], cfg), entry["name"]
        # ... and agrees with the `evaluation` block the model cards show.
        evaluation = entry.get("evaluation", {})
        assert protocol["window"] == evaluation.get("window") and protocol["stride"] == evaluation.get("stride"), \
            entry["name"]
        assert protocol["ms_scales"] == evaluation.get("ms_scales", []), entry["name"]


GOLDEN_STAND_INS = {
    # architecture: (golden checkpoint, side file, the release file layout the stand-in is copied to)
    "segmenter": ("segmenter/mask_tiny/checkpoint.pth", "segmenter/mask_tiny/variant.yml", "segmenter-t16-ade"),
    "setr": ("setr/setr_original_pup_tiny/checkpoint.pth", "setr/setr_original_pup_tiny/config.py", "setr-pup-ade"),
    "segformer": ("segformer/segformer_original_tiny/checkpoint.pth", None, "segformer-b0-cityscapes"),
}


@pytest.mark.parametrize("architecture", sorted(GOLDEN_STAND_INS))
def test_conversion_of_a_zoo_release_records_its_protocol(architecture, golden_dir, tmp_path):
    """The conversion CLI on a file laid out as a release (golden weights standing in) writes the release's
    protocol into config.json and its resize into preprocessor_config.json."""
    import importlib
    import json
    import shutil

    from hf_segmodels.cards.zoo import load_zoo, zoo_test_protocol

    checkpoint, side_file, name = GOLDEN_STAND_INS[architecture]
    entry = next(e for e in load_zoo()["models"] if e["name"] == name)
    target = tmp_path / "downloads" / entry["checkpoint"]["match"]
    target.parent.mkdir(parents=True)
    shutil.copy(golden_dir / checkpoint, target)
    argv = ["--checkpoint", str(target), "--output_dir", str(tmp_path / "out")]
    if side_file:
        argv += ["--config", str(golden_dir / side_file)]
    importlib.import_module(f"conversion_scripts.convert_{architecture}").main(argv)
    expected = zoo_test_protocol(entry).to_dict()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["test_protocol"] == expected
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["size"] == expected["resize"]


# ------------------------------------------------------------------------------------------------ infer_logits, pipeline
def _golden_model(architecture: str, golden_dir):
    if architecture == "segmenter":
        from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint

        return convert_segmenter_checkpoint(golden_dir / "segmenter/mask_tiny/checkpoint.pth",
                                            golden_dir / "segmenter/mask_tiny/variant.yml")
    if architecture == "setr":
        from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

        return convert_setr_checkpoint(golden_dir / "setr/setr_original_pup_tiny/checkpoint.pth",
                                       golden_dir / "setr/setr_original_pup_tiny/config.py")
    if architecture == "segformer":
        from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint

        return convert_segformer_checkpoint(golden_dir / "segformer/segformer_original_tiny/checkpoint.pth", None)
    from hf_segmodels.maskformer.convert_maskformer import convert_original_checkpoint

    return convert_original_checkpoint(golden_dir / "maskformer/r50_base/model_final.pkl", None)


# Each release's protocol, with the window scaled down to the tiny golden models (the image stays larger than it).
RELEASE_PROTOCOLS = {
    "segmenter": "segmenter-l16-cityscapes",  # slide 768 / 512
    "setr": "setr-pup-ade",                   # slide 512 / 341
    "segformer": "segformer-b0-cityscapes",   # slide 1024 / 768
    "maskformer": "maskformer-r50-ade",       # whole image
}


@pytest.fixture(scope="module", params=sorted(RELEASE_PROTOCOLS))
def protocol_checkpoint(request, golden_dir, tmp_path_factory):
    from hf_segmodels.cards.zoo import load_zoo, zoo_test_protocol
    from hf_segmodels.protocol import apply_test_protocol

    architecture = request.param
    model, processor = _golden_model(architecture, golden_dir)
    entry = next(e for e in load_zoo()["models"] if e["name"] == RELEASE_PROTOCOLS[architecture])
    protocol = zoo_test_protocol(entry).to_dict()
    factor = 16  # release window / 16: 48x48 windows with stride 32 for Segmenter, ...
    if protocol["window"]:
        protocol["window"] = [w // factor for w in protocol["window"]]
        protocol["stride"] = [s // factor for s in protocol["stride"]]
    protocol["resize"] = {"shortest_edge": 72, "longest_edge": 200}
    apply_test_protocol(model, processor, protocol)
    folder = tmp_path_factory.mktemp(architecture)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return architecture, folder


def _label_map(segments, size) -> np.ndarray:
    labels = {}
    result = np.full(size, -1)
    for segment in segments:
        mask = np.asarray(segment["mask"]) > 0
        assert not (result[mask] >= 0).any(), "segments overlap"
        result[mask] = labels.setdefault(segment["label"], len(labels))
    assert (result >= 0).all(), "every pixel belongs to a segment"
    return result, labels


@pytest.mark.parametrize("protocol", [True, False])
def test_pipeline_runs_the_checkpoints_protocol(protocol_checkpoint, protocol):
    """pipeline() on a checkpoint with a protocol = infer_logits with that protocol on the processed image, resized
    to the input image; `protocol=False`: plain whole-image inference."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    architecture, folder = protocol_checkpoint
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    image = PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    encoded = processor(image, return_tensors="pt")
    pixel_values = encoded["pixel_values"]
    if "pixel_mask" in encoded:  # MaskFormer pads the batch (to 32 for a semantic release): the image's own extent
        mask = encoded["pixel_mask"][0]
        pixel_values = pixel_values[..., : int(mask.any(1).sum()), : int(mask.any(0).sum())]
    recorded = get_test_protocol(model)
    assert pixel_values.shape[-2:] == (72, 104)
    if recorded.window:
        assert pixel_values.shape[-1] > recorded.window[1]  # several windows
    scores = hf_segmodels.infer_logits(model, pixel_values, protocol=protocol)
    window, stride = recorded.sliding_window if protocol else (None, None)
    assert torch.equal(scores, hf_segmodels.infer_logits(model, pixel_values, window=window, stride=stride,
                                                         protocol=False))
    expected = torch.nn.functional.interpolate(scores, size=(90, 130), mode="bilinear", align_corners=False)[0]
    expected = expected.argmax(0).numpy()

    segmenter = pipeline("image-segmentation", model=str(folder))
    segments = segmenter(image) if protocol else segmenter(image, protocol=False)
    found, labels = _label_map(segments, (90, 130))
    id2label = model.config.id2label
    names = np.array([id2label[i] for i in range(len(id2label))])
    # semantic by default, as transformers' pipeline answers for semantic models: masks without scores
    assert all(segment["score"] is None for segment in segments)
    inverse = {index: name for name, index in labels.items()}
    assert (np.vectorize(inverse.get)(found) == names[expected]).all()
    if architecture != "maskformer":  # (MaskFormer's panoptic subtask runs its own panoptic inference)
        kwargs = {} if protocol else {"protocol": False}
        panoptic = segmenter(image, subtask="panoptic", **kwargs)
        found, labels = _label_map(panoptic, (90, 130))
        inverse = {index: name for name, index in labels.items()}
        assert (np.vectorize(inverse.get)(found) == names[expected]).all()
        probabilities = torch.nn.functional.interpolate(scores, size=(90, 130), mode="bilinear",
                                                        align_corners=False)[0].softmax(0).max(0).values.numpy()
        for segment in panoptic:  # the class's mean probability over its pixels
            where = names[expected] == segment["label"]
            assert segment["score"] == pytest.approx(float(probabilities[where].mean()), abs=1e-5)


def test_conversions_of_unknown_checkpoints_record_their_side_files_test_settings():
    """Not a zoo release: the protocol comes from the side file's own test_cfg (mmseg / mmcv configs, the config
    embedded in a SegFormer checkpoint) or Segmenter's variant.yml `inference_kwargs`."""
    from hf_segmodels.conversion_utils import load_python_config
    from hf_segmodels.segformer.convert_segformer import convert_segformer_checkpoint
    from hf_segmodels.segmenter.convert_segmenter import convert_segmenter_checkpoint, read_variant
    from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

    golden = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
    cases = [
        (convert_setr_checkpoint, golden / "setr" / "setr_pup_tiny", ("config.py", "mmseg")),
        (convert_setr_checkpoint, golden / "setr" / "setr_original_pup_tiny", ("config.py", "original")),
        (convert_segformer_checkpoint, golden / "segformer" / "segformer_original_tiny", (None, "original")),
        (convert_segmenter_checkpoint, golden / "segmenter" / "segmenter_mask_tiny", ("config.py", "mmseg")),
    ]
    for convert, folder, (config_name, source) in cases:
        config_path = folder / config_name if config_name else None
        model, processor = convert(folder / "checkpoint.pth", config_path, source)
        cfg = load_python_config(folder / "config.py")
        test_cfg = (cfg.get("model") or {}).get("test_cfg") or cfg.get("test_cfg")
        recorded = model.config.test_protocol
        assert recorded["mode"] == test_cfg["mode"] == "slide", folder.name
        assert recorded["window"] == list(test_cfg["crop_size"]) and recorded["stride"] == list(test_cfg["stride"])
        size = processor.size if isinstance(processor.size, dict) else vars(processor.size)
        assert recorded["resize"] == {key: value for key, value in size.items() if value}, folder.name
    variant_folder = golden / "segmenter" / "mask_tiny"
    model, _ = convert_segmenter_checkpoint(variant_folder / "checkpoint.pth", variant_folder / "variant.yml")
    inference = read_variant(variant_folder / "variant.yml")["inference_kwargs"]
    assert model.config.test_protocol["window"] == [inference["window_size"]] * 2
    assert model.config.test_protocol["stride"] == [inference["window_stride"]] * 2
