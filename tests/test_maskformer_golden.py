"""MaskFormer against the ORIGINAL facebookresearch/MaskFormer (golden fixtures in ../shared/golden/maskformer/, built
with the original code; see their README.md and meta.json): every case, from every weight file (model_final.pkl,
model_final_v1_layout.pkl, model.pth), through the user's path AutoImageProcessor-style preprocessing -> model ->
post_process_*: raw predictions within 1e-3, semantic argmax and panoptic maps equal on >= 99.9% of pixels and the
same segments, for each image alone and for the two-image batch (padded together, each cropped back)."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import hf_segmodels  # noqa: F401
from hf_segmodels.conversion_utils import ConversionError
from hf_segmodels.maskformer.convert_maskformer import (
    ADE20K_PANOPTIC_STUFF_IDS,
    COCO_PANOPTIC_STUFF_IDS,
    convert_original_checkpoint,
    load_original_checkpoint,
    settings_of_release,
)

from conftest import GOLDEN_DIR

MASKFORMER_DIR = GOLDEN_DIR / "maskformer"
CASES = sorted(p.name for p in MASKFORMER_DIR.iterdir() if (p / "config.yaml").is_file()) if MASKFORMER_DIR.is_dir() else []
WEIGHT_FILES = ["model_final.pkl", "model_final_v1_layout.pkl", "model.pth"]
RAW_TOLERANCE = 1e-3
PIXEL_AGREEMENT = 0.999

_CONVERTED: dict = {}


def converted(case: str, weights: str):
    key = (case, weights)
    if key not in _CONVERTED:
        folder = MASKFORMER_DIR / case
        _CONVERTED[key] = convert_original_checkpoint(folder / weights, folder / "config.yaml")
    return _CONVERTED[key]


def meta(case: str) -> dict:
    return json.loads((MASKFORMER_DIR / case / "meta.json").read_text())


def runs(case: str):
    """(name, image indices, reference file suffixes): image 1 alone, image 2 alone, both as one batch."""
    return [("image1", [0], [""]), ("image2", [1], ["_2"]), ("batch", [0, 1], ["_batch_0", "_batch_1"])]


def images_of(case: str) -> list[np.ndarray]:
    folder = MASKFORMER_DIR / case
    # float32 CHW 0..255 RGB (integer valued) -> the HWC uint8 images a user has
    return [np.load(folder / name).transpose(1, 2, 0).round().astype(np.uint8) for name in ("input.npy", "input_2.npy")]


def output_size(case: str, index: int) -> tuple[int, int]:
    """Image 1 at its own size; image 2 at the size requested from the original (height / width, 92x131)."""
    if index == 0:
        return tuple(np.load(MASKFORMER_DIR / case / "input.npy").shape[-2:])
    extra = meta(case)["input_convention"]["input_2_extra_keys"]
    return extra["height"], extra["width"]


def predict(case: str, weights: str, indices: list[int]):
    model, processor = converted(case, weights)
    images = images_of(case)
    inputs = processor([images[i] for i in indices], do_resize=False, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return model, processor, inputs, outputs


@pytest.mark.parametrize("weights", WEIGHT_FILES)
@pytest.mark.parametrize("case", CASES)
def test_raw_predictions_match_the_original(case, weights):
    folder = MASKFORMER_DIR / case
    padded = meta(case)["input_convention"]["padded_size"]
    for name, indices, _ in runs(case):
        _, _, inputs, outputs = predict(case, weights, indices)
        suffix = {"image1": "", "image2": "_2", "batch": "_batch"}[name]
        expected_padded = padded["input" if name == "image1" else "input_2" if name == "image2" else "batch"]
        assert list(inputs["pixel_values"].shape[-2:]) == expected_padded, f"{case} {name}: padding"
        logits = np.load(folder / f"pred_logits{suffix}.npy")
        masks = np.load(folder / f"pred_masks{suffix}.npy")
        assert outputs.masks_queries_logits.shape == masks.shape
        logits_error = np.abs(outputs.class_queries_logits.numpy() - logits).max()
        masks_error = np.abs(outputs.masks_queries_logits.numpy() - masks).max()
        assert logits_error < RAW_TOLERANCE and masks_error < RAW_TOLERANCE, (case, weights, name, logits_error, masks_error)


@pytest.mark.parametrize("weights", WEIGHT_FILES)
@pytest.mark.parametrize("case", CASES)
def test_semantic_post_processing_matches_the_original(case, weights):
    folder = MASKFORMER_DIR / case
    if not (folder / "sem_seg.npy").is_file():
        pytest.skip("no semantic outputs in this case")
    files = {"": "sem_seg.npy", "_2": "sem_seg_2.npy", "_batch_0": "sem_seg_batch_0.npy",
             "_batch_1": "sem_seg_batch_1.npy"}  # fmt: skip
    for name, indices, suffixes in runs(case):
        _, processor, _, outputs = predict(case, weights, indices)
        sizes = [output_size(case, i) for i in indices]
        maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
        for result, suffix, size in zip(maps, suffixes, sizes):
            expected = np.load(folder / files[suffix]).argmax(0)
            assert tuple(result.shape) == size == expected.shape
            agreement = (result.numpy() == expected).mean()
            assert agreement >= PIXEL_AGREEMENT, (case, weights, name, suffix, agreement)
    # without target sizes every image comes back at its own (unpadded) size
    _, processor, _, outputs = predict(case, weights, [0, 1])
    default = processor.post_process_semantic_segmentation(outputs)
    assert [tuple(m.shape) for m in default] == [tuple(np.load(folder / n).shape[-2:]) for n in ("input.npy", "input_2.npy")]


@pytest.mark.parametrize("weights", WEIGHT_FILES)
@pytest.mark.parametrize("case", CASES)
def test_panoptic_post_processing_matches_the_original(case, weights):
    folder = MASKFORMER_DIR / case
    if not (folder / "panoptic_seg.npy").is_file():
        pytest.skip("no panoptic outputs in this case")
    rules = meta(case)["postprocessing"]["panoptic_inference"]
    stuff = rules["metadata"]["stuff_contiguous_ids"]
    for name, indices, suffixes in runs(case):
        _, processor, _, outputs = predict(case, weights, indices)
        sizes = [output_size(case, i) for i in indices]
        results = processor.post_process_panoptic_segmentation(
            outputs, threshold=rules["object_mask_threshold"], overlap_mask_area_threshold=rules["overlap_threshold"],
            label_ids_to_fuse=set(stuff), target_sizes=sizes,
        )
        for result, suffix, size in zip(results, suffixes, sizes):
            expected = np.load(folder / f"panoptic_seg{suffix}.npy")
            info = json.loads((folder / f"segments_info{suffix}.json").read_text())
            assert tuple(result["segmentation"].shape) == size == expected.shape
            agreement = (result["segmentation"].numpy() == expected).mean()
            assert agreement >= PIXEL_AGREEMENT, (case, weights, name, suffix, agreement)
            ours = [(s["id"], s["label_id"], s["was_fused"]) for s in result["segments_info"]]
            assert ours == [(s["id"], s["category_id"], not s["isthing"]) for s in info], (case, name, suffix)


@pytest.mark.parametrize("case", CASES)
def test_every_weight_layout_converts_to_identical_weights(case):
    folder = MASKFORMER_DIR / case
    states = [converted(case, weights)[0].state_dict() for weights in WEIGHT_FILES]
    for state in states[1:]:
        assert state.keys() == states[0].keys()
        for key in state:
            assert torch.equal(state[key], states[0][key]), key


@pytest.mark.parametrize("case", CASES)
def test_the_config_is_read_from_config_yaml(case):
    import yaml

    config = yaml.safe_load((MASKFORMER_DIR / case / "config.yaml").read_text())
    mask_former = config["MODEL"]["MASK_FORMER"]
    model, processor = converted(case, "model_final.pkl")
    assert model.config.size_divisibility == mask_former["SIZE_DIVISIBILITY"] == processor.size_divisor
    assert model.config.decoder_config.decoder_attention_heads == mask_former["NHEADS"]
    assert processor.sem_seg_postprocessing_before_inference == mask_former["TEST"]["PANOPTIC_ON"]
    if mask_former["ENFORCE_INPUT_PROJ"]:
        assert model.transformer_decoder.input_projection is not None
    mean = [v / 255 for v in config["MODEL"]["PIXEL_MEAN"]]
    np.testing.assert_allclose(processor.image_mean, mean, rtol=1e-6)


def test_converted_panoptic_case_saves_and_reloads_through_the_auto_classes(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    case = "swin_panoptic_nopad"
    if case not in CASES:
        pytest.skip("fixture missing")
    model, processor = converted(case, "model_final.pkl")
    processor.label_ids_to_fuse = [1, 4, 5, 7, 8]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model = AutoModelForUniversalSegmentation.from_pretrained(tmp_path).eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size_divisor == 0 and processor.label_ids_to_fuse == [1, 4, 5, 7, 8]
    images = images_of(case)
    with torch.no_grad():
        outputs = model(**processor(images, do_resize=False, return_tensors="pt"))
    results = processor.post_process_panoptic_segmentation(
        outputs, threshold=0.8, overlap_mask_area_threshold=0.8, target_sizes=[output_size(case, 0), output_size(case, 1)]
    )  # label_ids_to_fuse defaults to the recorded stuff classes, as pipeline() passes none
    expected = np.load(MASKFORMER_DIR / case / "panoptic_seg_batch_1.npy")
    assert (results[1]["segmentation"].numpy() == expected).mean() >= PIXEL_AGREEMENT


# ----------------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------------


def _state_dict(case: str = "r50_base") -> dict:
    return {k: v.numpy() for k, v in load_original_checkpoint(MASKFORMER_DIR / case / "model.pth").items()}


def test_protocol_2_pickles_load_and_other_globals_are_refused(tmp_path):
    state = _state_dict()
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": state, "__author__": "test"}, handle, protocol=2)  # bytes via _codecs.encode
    assert b"_codecs" in path.read_bytes()
    loaded = load_original_checkpoint(path)
    assert all(np.array_equal(loaded[k].numpy(), v) for k, v in state.items())

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": Evil()}}, protocol=2))
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        load_original_checkpoint(evil)


def test_a_checkpoint_fitting_neither_layout_lists_the_unknown_keys(tmp_path):
    state = _state_dict()
    state["sem_seg_head.pixel_decoder.extra_conv.weight"] = np.zeros((1,), np.float32)
    state["sem_seg_head.predictor.something_new"] = np.zeros((1,), np.float32)
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"model": state, "__author__": "t"}))
    with pytest.raises(ConversionError) as error:
        convert_original_checkpoint(path, MASKFORMER_DIR / "r50_base" / "config.yaml")
    assert "sem_seg_head.pixel_decoder.extra_conv.weight" in str(error.value)
    assert "sem_seg_head.predictor.something_new" in str(error.value)

    mixed = _state_dict()
    mixed["sem_seg_head.adapter_1.weight"] = mixed.pop("sem_seg_head.pixel_decoder.adapter_1.weight")
    path.write_bytes(pickle.dumps({"model": mixed, "__author__": "t"}))
    with pytest.raises(ConversionError, match="mixes the two pixel-decoder layouts"):
        convert_original_checkpoint(path)


def test_a_config_that_does_not_describe_the_weights_is_refused(tmp_path):
    text = (MASKFORMER_DIR / "r50_base" / "config.yaml").read_text().replace("NUM_CLASSES: 7", "NUM_CLASSES: 150")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConversionError, match="NUM_CLASSES"):
        convert_original_checkpoint(MASKFORMER_DIR / "r50_base" / "model.pth", tmp_path / "config.yaml")
    text = (MASKFORMER_DIR / "r50_base" / "config.yaml").read_text().replace("PRE_NORM: false", "PRE_NORM: true")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConversionError, match="PRE_NORM"):
        convert_original_checkpoint(MASKFORMER_DIR / "r50_base" / "model.pth", tmp_path / "config.yaml")


def test_released_configs_with_base_files_and_python_tags_are_read_without_evaluating(tmp_path):
    """The released ADE20K panoptic config inherits through _BASE_ and computes MIN_SIZE_TRAIN with a Python tag."""
    from hf_segmodels.maskformer.convert_maskformer import read_detectron2_config, settings_from_detectron2_config

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "Base.yaml").write_text("MODEL:\n  MASK_FORMER:\n    NHEADS: 4\n    SIZE_DIVISIBILITY: 32\n")
    (tmp_path / "panoptic.yaml").write_text(
        "_BASE_: base/Base.yaml\nMODEL:\n  MASK_FORMER:\n    SIZE_DIVISIBILITY: 0\n    TEST:\n      PANOPTIC_ON: True\n"
        "DATASETS:\n  TEST: (\"ade20k_panoptic_val\",)\n  TRAIN: [\"ade20k_panoptic_train\"]\n"
        "INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval [\"__import__('os').system('echo pwned')\"]\n"
        "  MIN_SIZE_TEST: 640\n  MAX_SIZE_TEST: 2560\n"
    )
    config = read_detectron2_config(tmp_path / "panoptic.yaml")
    assert config["INPUT"]["MIN_SIZE_TRAIN"] is None
    overrides, processor, bgr = settings_from_detectron2_config(config)
    assert overrides["size_divisibility"] == 0 and overrides["decoder_config"]["decoder_attention_heads"] == 4
    assert processor["label_ids_to_fuse"] == list(ADE20K_PANOPTIC_STUFF_IDS)
    assert processor["size"] == {"shortest_edge": 640, "longest_edge": 2560} and not bgr


def test_every_zoo_release_records_its_size_divisibility_and_stuff_classes():
    from hf_segmodels.cards.zoo import load_zoo

    entries = [e for e in load_zoo()["models"] if e["architecture"] == "maskformer" and e["source_format"] == "original"]
    assert len(entries) >= 20
    for entry in entries:
        overrides, processor = settings_of_release(entry["checkpoint"]["file_name"])
        panoptic = entry["dataset"].endswith("panoptic")
        assert overrides["size_divisibility"] == processor["size_divisor"] == (0 if panoptic else 32), entry["name"]
        assert processor["sem_seg_postprocessing_before_inference"] == panoptic
        if entry["dataset"] == "coco-panoptic":
            assert processor["label_ids_to_fuse"] == list(COCO_PANOPTIC_STUFF_IDS)
        elif entry["dataset"] == "ade20k-panoptic":
            assert processor["label_ids_to_fuse"] == list(ADE20K_PANOPTIC_STUFF_IDS)
        else:
            assert "label_ids_to_fuse" not in processor
    assert len(COCO_PANOPTIC_STUFF_IDS) == 53 and len(ADE20K_PANOPTIC_STUFF_IDS) == 50


def test_a_zoo_release_without_config_gets_its_release_settings(tmp_path):
    release = tmp_path / "model_final_6f60dc.pkl"  # the COCO panoptic R50 release's file name
    release.write_bytes((MASKFORMER_DIR / "r50_base" / "model_final.pkl").read_bytes())
    model, processor = convert_original_checkpoint(release)
    assert model.config.size_divisibility == 0 and processor.size_divisor == 0
    assert processor.label_ids_to_fuse == list(COCO_PANOPTIC_STUFF_IDS)
    assert processor.sem_seg_postprocessing_before_inference


def test_evaluate_py_scores_maskformer_with_the_original_protocol():
    """examples/evaluate.py's MaskFormer path: the original's argmax (image 2 requested at 92x131) as ground truth
    gives mIoU ~1 (>= 99.9% of the pixels agree)."""
    import importlib.util

    from accelerate import Accelerator

    case = "r50_base"
    if case not in CASES:
        pytest.skip("fixture missing")
    spec = importlib.util.spec_from_file_location("evaluate_example", Path(__file__).parents[1] / "examples" / "evaluate.py")
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    model, processor = converted(case, "model_final.pkl")
    assert evaluate.is_mask_classification(model)
    folder = MASKFORMER_DIR / case
    labels = [np.load(folder / "sem_seg.npy").argmax(0), np.load(folder / "sem_seg_2.npy").argmax(0)]

    class Samples:
        def __len__(self):
            return 2

        def sample(self, index):
            return images_of(case)[index], labels[index].astype(np.int64)

    processor = type(processor).from_dict({**processor.to_dict(), "do_resize": False})
    results = evaluate.evaluate_maskformer_semantic(model, processor, Samples(), Accelerator(cpu=True))
    assert results["overall_accuracy"] >= PIXEL_AGREEMENT


def test_pipeline_uses_the_recorded_panoptic_thresholds(tmp_path):
    """`pipeline("image-segmentation")` with no arguments on a converted panoptic release gives the original's
    panoptic result: its thresholds (TEST.OBJECT_MASK_THRESHOLD / OVERLAP_THRESHOLD, recorded by the converter in the
    processor) replace transformers' generic 0.9 / 0.5."""
    from PIL import Image
    from transformers import pipeline

    case = "swin_panoptic_nopad"
    model, processor = converted(case, "model_final.pkl")
    assert (processor.object_mask_threshold, processor.overlap_threshold) == (0.8, 0.8)  # from config.yaml
    processor.label_ids_to_fuse = meta(case)["postprocessing"]["panoptic_inference"]["metadata"]["stuff_contiguous_ids"]
    processor.do_resize = False  # the fixture's image is already at the test size
    segmenter = pipeline("image-segmentation", model=model, image_processor=processor)
    image = images_of(case)[0]
    annotations = segmenter(Image.fromarray(image))
    expected = np.load(MASKFORMER_DIR / case / "panoptic_seg.npy")
    info = json.loads((MASKFORMER_DIR / case / "segments_info.json").read_text())
    assert [a["label"] for a in annotations] == [model.config.id2label[s["category_id"]] for s in info]
    for annotation, segment in zip(annotations, info):
        mask = np.asarray(annotation["mask"]) > 0
        assert (mask == (expected == segment["id"])).mean() >= PIXEL_AGREEMENT
    # transformers' generic thresholds, asked for explicitly, drop segments here: the defaults above mattered
    generic = segmenter(Image.fromarray(image), threshold=0.9, overlap_mask_area_threshold=0.5)
    assert [a["label"] for a in generic] != [a["label"] for a in annotations]
