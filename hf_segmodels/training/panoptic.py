"""Panoptic and instance training data for MaskFormer (`examples/train.py --task panoptic|instance`).

Data, as 🤗 datasets hold it:

- panoptic: a panoptic map per image (a single-channel PNG of segment ids, or COCO's RGB encoding
  `id = R + 256 G + 256^2 B`) and a `segments_info` list of `{"id", "category_id", "iscrowd"}` (the layout of the
  COCO-panoptic datasets on the Hub; a list of dicts or `datasets`' dict of lists);
- instance: the same (an instance-id map + `segments_info`), or an instance-id map (ids 1..N, 0 = background) with a
  column of N class ids, or a list of N binary masks per image with its N class ids. Masks are painted into one id
  map in order (a later mask wins where masks overlap), so that one joint augmentation serves every layout.

Targets are built as the original's `MaskFormerPanopticDatasetMapper` / `DETRPanopticDatasetMapper`
(facebookresearch/MaskFormer, mask_former/data/dataset_mappers/): the image and the id map are augmented jointly
(nearest-neighbour for the ids), then every segment that is not `iscrowd` becomes one binary mask with its class;
crowd regions belong to no target. Two choices are ours: the segments of a stuff class (`stuff_ids`) are merged
into one segment per image (COCO's annotations already hold one, an instance-id map may not), and a segment that
augmentation left without pixels (cropped away) is dropped rather than kept as an empty target mask (which would
teach a query to predict its class with an empty mask; Mask2Former's mappers drop them too).

The COCO panoptic augmentation of the paper (`PanopticAugmentation`, configs/coco-panoptic/Base-COCO-Panoptic
Segmentation.yaml with DATASET_MAPPER_NAME "detr_panoptic"): horizontal flip (p 0.5), then with p 0.5 either a
shortest-edge resize to one of 480, 512, ..., 800 (longest edge <= 1333), or a shortest-edge resize to one of 400,
500, 600, a random crop of 384-600 pixels per side (detectron2's `RandomCrop("absolute_range", (384, 600))`) and
the same 480-800 resize. No colour augmentation. Batches are zero-padded (after normalisation) to their largest
image, rounded up to the model's `size_divisibility`; target masks are padded with zeros (the original's
`prepare_targets`).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from .augmentation import _resize
from .data import decode_image

# configs/coco-panoptic/Base-COCO-PanopticSegmentation.yaml (INPUT.MIN_SIZE_TRAIN, detectron2's default
# MAX_SIZE_TRAIN 1333, CROP.SIZE (384, 600) "absolute_range") and detr_panoptic_dataset_mapper.py ([400, 500, 600]).
COCO_MIN_SIZES = tuple(range(480, 801, 32))
COCO_MAX_SIZE = 1333
COCO_CROP_MIN_SIZES = (400, 500, 600)
COCO_CROP_SIZE_RANGE = (384, 600)


# ---------------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------------


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic RGB encoding (H, W, 3) -> (H, W) int64 ids `R + 256 G + 256^2 B` (panopticapi's `rgb2id`)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def decode_panoptic_ids(label) -> np.ndarray:
    """A panoptic / instance-id map (PIL image or array; RGB(A) = COCO's RGB encoding, otherwise ids) -> (H, W)
    int64 segment ids."""
    if isinstance(label, PIL.Image.Image):
        label = np.asarray(label.convert("RGB") if label.mode == "RGBA" else label)
    array = np.asarray(label)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return rgb_to_id(array[..., :3])
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.squeeze(0 if array.shape[0] == 1 else -1)
    if array.ndim != 2 or array.dtype.kind not in "iub":
        raise ValueError(
            f"Panoptic maps must be (H, W) integer segment ids or (H, W, 3) RGB-encoded ids, got shape {array.shape} "
            f"dtype {array.dtype}."
        )
    return array.astype(np.int64)


def masks_to_ids(masks) -> np.ndarray:
    """N binary masks (a list of images / arrays, or an (N, H, W) array) -> (H, W) int64 id map with mask i painted
    as id i + 1 (later masks win where they overlap; 0 = none)."""
    arrays = [np.asarray(m.convert("L") if isinstance(m, PIL.Image.Image) else m) for m in masks]
    if not arrays:
        raise ValueError("An example has an empty list of instance masks; give its size with an id map instead.")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"Instance masks must all be (H, W) and of one size, got shapes {sorted(shapes)}.")
    ids = np.zeros(arrays[0].shape, dtype=np.int64)
    for index, mask in enumerate(arrays):
        ids[mask.astype(bool)] = index + 1
    return ids


def segments_list(value) -> list[dict]:
    """A `segments_info` value as a list of dicts (`datasets` returns a sequence of structs as a dict of lists)."""
    if value is None:
        return []
    if isinstance(value, dict):
        keys = list(value)
        length = len(value[keys[0]]) if keys else 0
        return [{key: value[key][i] for key in keys} for i in range(length)]
    return [dict(info) for info in value]


def normalize_segments(segments: Sequence[dict], num_labels: int, category_map: dict[int, int] | None = None,
                       where: str = "") -> list[dict]:
    """`{"id", "category_id", "iscrowd"}` with the class ids mapped through `category_map` (dataset category id ->
    class index, e.g. COCO's 1..200 -> 0..132) and checked to lie in `[0, num_labels)`."""
    result = []
    for info in segments:
        if "id" not in info or ("category_id" not in info and "label_id" not in info):
            raise ValueError(f"{where}a segment {info!r} needs 'id' and 'category_id'.")
        category = int(info["category_id"] if "category_id" in info else info["label_id"])
        if category_map is not None:
            if category not in category_map:
                raise ValueError(f"{where}category_id {category} is not in --category_map.")
            category = category_map[category]
        if not 0 <= category < num_labels:
            hint = " (map the dataset's category ids to 0 .. K-1 with --category_map)" if category >= num_labels else ""
            raise ValueError(f"{where}category_id {category} is outside [0, {num_labels}){hint}.")
        result.append({"id": int(info["id"]), "category_id": category, "iscrowd": int(bool(info.get("iscrowd", 0)))})
    return result


def merge_stuff(ids: np.ndarray, segments: list[dict], stuff_ids) -> tuple[np.ndarray, list[dict]]:
    """One segment per stuff class: later non-crowd segments of a stuff class are painted with the first one's id."""
    stuff_ids = set(stuff_ids or ())
    first: dict[int, int] = {}
    kept, remap = [], {}
    for info in segments:
        label = info["category_id"]
        if label in stuff_ids and not info["iscrowd"]:
            if label in first:
                remap[info["id"]] = first[label]
                continue
            first[label] = info["id"]
        kept.append(info)
    if remap:
        ids = ids.copy()
        for old, new in remap.items():
            ids[ids == old] = new
    return ids, kept


def build_targets(ids: np.ndarray, segments: list[dict], stuff_ids=()) -> tuple[np.ndarray, np.ndarray]:
    """The original's training targets from an (augmented) id map: per non-crowd segment one (H, W) bool mask and
    its class (crowd segments are no target), stuff classes merged into one segment, segments without pixels
    dropped. Returns masks (N, H, W) bool and classes (N,) int64."""
    ids, segments = merge_stuff(ids, segments, stuff_ids)
    masks, classes = [], []
    for info in segments:
        if info["iscrowd"]:
            continue
        mask = ids == info["id"]
        if mask.any():
            masks.append(mask)
            classes.append(info["category_id"])
    if not masks:
        return np.zeros((0, *ids.shape), dtype=bool), np.zeros((0,), dtype=np.int64)
    return np.stack(masks), np.asarray(classes, dtype=np.int64)


class PanopticSamples(torch.utils.data.Dataset):
    """Decoded (image (H, W, 3) uint8, ids (H, W) int64, segments [{"id", "category_id", "iscrowd"}]) of one split.

    `segments_column` holds `segments_info`; without it, `classes_column` holds one class per instance (ids 1..N of
    an instance-id map, or the N masks of a list). Decoding runs as a `datasets` on-access transform on these columns
    only."""

    def __init__(self, dataset, image_column: str, label_column: str, num_labels: int, split: str, *,
                 segments_column: str | None = None, classes_column: str | None = None,
                 category_map: dict[int, int] | None = None):
        if (segments_column is None) == (classes_column is None):
            raise ValueError("Pass exactly one of segments_column / classes_column.")
        self.num_labels, self.split, self.category_map = num_labels, split, category_map
        info_column = segments_column or classes_column

        def decode(batch):
            images, id_maps, infos = [], [], []
            for image, label, info in zip(batch[image_column], batch[label_column], batch[info_column]):
                images.append(decode_image(image))
                is_mask_list = isinstance(label, (list, tuple)) or (
                    isinstance(label, np.ndarray) and label.ndim == 3 and label.shape[-1] not in (1, 3, 4)
                )
                id_maps.append(masks_to_ids(label) if is_mask_list else decode_panoptic_ids(label))
                if segments_column is not None:
                    infos.append(segments_list(info))
                else:
                    infos.append([{"id": i + 1, "category_id": int(c), "iscrowd": 0} for i, c in enumerate(info)])
            return {"image": images, "ids": id_maps, "segments": infos}

        self.dataset = dataset.with_transform(decode, columns=[image_column, label_column, info_column])

    def __len__(self) -> int:
        return len(self.dataset)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        example = self.dataset[int(index)]
        image, ids = example["image"], example["ids"]
        where = f"Example {index} of the {self.split!r} split: "
        if image.shape[:2] != ids.shape:
            raise ValueError(f"{where}image size {image.shape[:2]} differs from its panoptic map size {ids.shape}.")
        segments = normalize_segments(example["segments"], self.num_labels, self.category_map, where)
        unknown = sorted(set(np.unique(ids).tolist()) - {info["id"] for info in segments} - {0})
        if unknown:
            raise ValueError(f"{where}the panoptic map has segment ids {unknown[:10]} missing from its segments_info "
                             "(for RGB-encoded maps, id = R + 256 G + 256^2 B).")
        return image, ids, segments


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation and batching
# ---------------------------------------------------------------------------------------------------------------------


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's `ResizeShortestEdge.get_output_shape`: shorter side `short`, longer side at most `max_size`."""
    scale = short / min(height, width)
    new_height, new_width = (short, scale * width) if height < width else (scale * height, short)
    if max(new_height, new_width) > max_size:
        factor = max_size / max(new_height, new_width)
        new_height, new_width = new_height * factor, new_width * factor
    return int(new_height + 0.5), int(new_width + 0.5)


@dataclass
class PanopticAugmentation:
    """The COCO panoptic training augmentation of MaskFormer (see the module docstring), image and id map jointly.

    Args:
        min_sizes: shorter-side sizes of the final resize (one drawn per image).
        max_size: longest side of the final resize.
        crop_min_sizes: shorter-side sizes of the resize before the crop.
        crop_size_range: (min, max) side of the random crop (`absolute_range`).
        crop_prob: probability of the resize + crop branch.
        flip_prob: probability of a horizontal flip.
        image_mean, image_std: normalisation of the image processor (on [0, 1] pixels).
    """

    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    min_sizes: tuple[int, ...] = COCO_MIN_SIZES
    max_size: int = COCO_MAX_SIZE
    crop_min_sizes: tuple[int, ...] = COCO_CROP_MIN_SIZES
    crop_size_range: tuple[int, int] = COCO_CROP_SIZE_RANGE
    crop_prob: float = 0.5
    flip_prob: float = 0.5

    def _resize(self, image, ids, short: int, max_size: int):
        size = shortest_edge_size(*image.shape[:2], short, max_size)
        return _resize(image, size, PIL.Image.BILINEAR), _resize(ids, size, PIL.Image.NEAREST)

    def __call__(self, image: np.ndarray, ids: np.ndarray, rng: np.random.Generator):
        """image (H, W, 3) uint8, ids (H, W) int64 -> pixel_values (3, h, w) float32 (normalised), ids (h, w)."""
        if rng.random() < self.flip_prob:
            image, ids = image[:, ::-1], ids[:, ::-1]
        image, ids = np.ascontiguousarray(image), np.ascontiguousarray(ids)
        if rng.random() < self.crop_prob:
            image, ids = self._resize(image, ids, int(rng.choice(self.crop_min_sizes)), 2**31 - 1)
            height, width = ids.shape
            low, high = self.crop_size_range
            crop_h = int(rng.integers(min(height, low), min(height, high) + 1))
            crop_w = int(rng.integers(min(width, low), min(width, high) + 1))
            top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            image, ids = image[top:top + crop_h, left:left + crop_w], ids[top:top + crop_h, left:left + crop_w]
        image, ids = self._resize(image, ids, int(rng.choice(self.min_sizes)), self.max_size)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        pixels = (image.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), np.ascontiguousarray(ids)


class PanopticTrainSamples(torch.utils.data.Dataset):
    """Augmented training samples: `__getitem__((epoch, index))` -> {"pixel_values" (3, h, w), "mask_labels"
    (N, h, w) float, "class_labels" (N,)}, the augmentation seeded by (seed, epoch, index)."""

    def __init__(self, samples: PanopticSamples, augmentation: PanopticAugmentation, seed: int, stuff_ids=()):
        self.samples, self.augmentation, self.seed, self.stuff_ids = samples, augmentation, seed, tuple(stuff_ids)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        image, ids, segments = self.samples.sample(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        pixel_values, ids = self.augmentation(image, ids, rng)
        masks, classes = build_targets(ids, segments, self.stuff_ids)
        return {
            "pixel_values": torch.from_numpy(pixel_values),
            "mask_labels": torch.from_numpy(masks).float(),
            "class_labels": torch.from_numpy(classes),
        }


def collate_panoptic(examples: list[dict], size_divisibility: int = 32) -> dict:
    """Images zero-padded (bottom / right) to the batch's largest size rounded up to `size_divisibility`, target
    masks padded with zeros; `mask_labels` / `class_labels` stay lists (a different number of segments per image)."""
    height = max(example["pixel_values"].shape[-2] for example in examples)
    width = max(example["pixel_values"].shape[-1] for example in examples)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    pixel_values = torch.zeros(len(examples), 3, height, width)
    mask_labels = []
    for position, example in enumerate(examples):
        h, w = example["pixel_values"].shape[-2:]
        pixel_values[position, :, :h, :w] = example["pixel_values"]
        masks = torch.zeros(example["mask_labels"].shape[0], height, width)
        masks[:, :h, :w] = example["mask_labels"]
        mask_labels.append(masks)
    return {"pixel_values": pixel_values, "mask_labels": mask_labels,
            "class_labels": [example["class_labels"] for example in examples]}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _predict(model, processor, image: np.ndarray, device):
    inputs = processor(image, return_tensors="pt").to(device)
    with torch.no_grad():
        return model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))


def evaluate_panoptic(model, processor, samples: PanopticSamples, accelerator, *, stuff_ids=(),
                      object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                      description: str = "panoptic") -> dict:
    """PQ / SQ / RQ (overall, things and stuff) of `processor.post_process_panoptic_segmentation` (the original's
    panoptic inference, stuff classes fused) against the ground truth at its original resolution (stuff segments
    merged per class, crowd segments handled by panopticapi's rules); images are sharded across processes and the
    statistics summed, so every process returns the same result."""
    from tqdm.auto import tqdm

    from ..metrics import PanopticQualityMetric

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    num_labels = unwrapped.config.num_labels
    stuff_ids = sorted(set(stuff_ids))
    metric = PanopticQualityMetric(num_labels, thing_ids=[i for i in range(num_labels) if i not in stuff_ids])
    indices = range(accelerator.process_index, len(samples), accelerator.num_processes)
    for index in tqdm(indices, desc=description, disable=not accelerator.is_local_main_process):
        image, ids, segments = samples.sample(index)
        ids, segments = merge_stuff(ids, segments, stuff_ids)
        outputs = _predict(unwrapped, processor, image, accelerator.device)
        result = processor.post_process_panoptic_segmentation(
            outputs, threshold=object_mask_threshold, overlap_mask_area_threshold=overlap_threshold,
            label_ids_to_fuse=set(stuff_ids), target_sizes=[ids.shape],
        )[0]
        metric.update(result["segmentation"].cpu(), result["segments_info"], torch.from_numpy(ids), segments)
    metric.all_reduce()
    unwrapped.train(was_training)
    return metric.compute()


def evaluate_instances(model, processor, samples: PanopticSamples, accelerator, *, stuff_ids=(),
                       description: str = "instances") -> dict:
    """COCO-style mask AP (`mask_ap.MaskAPMetric`) of `processor.post_process_instance_segmentation` (every
    (query, class) pair with a non-empty mask, scored class probability x mean mask probability, at most one per
    query-class pair) over the thing segments of the ground truth; per-image matches are gathered across
    processes."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from .mask_ap import MaskAPMetric

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    stuff = set(stuff_ids)
    metric = MaskAPMetric()
    indices = range(accelerator.process_index, len(samples), accelerator.num_processes)
    for index in tqdm(indices, desc=description, disable=not accelerator.is_local_main_process):
        image, ids, segments = samples.sample(index)
        things = [info for info in segments if info["category_id"] not in stuff]
        gt_masks = np.stack([ids == info["id"] for info in things]) if things else np.zeros((0, *ids.shape), bool)
        outputs = _predict(unwrapped, processor, image, accelerator.device)
        result = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, target_sizes=[ids.shape], return_binary_maps=True
        )[0]
        kept = [i for i, info in enumerate(result["segments_info"]) if info["label_id"] not in stuff]
        if kept:
            pred_masks = result["segmentation"][kept].cpu().numpy() > 0.5
        else:
            pred_masks = np.zeros((0, *ids.shape), dtype=bool)
        metric.update(
            pred_masks,
            [result["segments_info"][i]["score"] for i in kept],
            [result["segments_info"][i]["label_id"] for i in kept],
            gt_masks, [info["category_id"] for info in things], [bool(info["iscrowd"]) for info in things],
        )
    if accelerator.num_processes > 1:
        metric.images = gather_object(metric.images)
    unwrapped.train(was_training)
    return metric.compute()


# ---------------------------------------------------------------------------------------------------------------------
# Flags and reporting
# ---------------------------------------------------------------------------------------------------------------------

PANOPTIC_SUMMARY = {"pq": "PQ", "sq": "SQ", "rq": "RQ", "pq_things": "PQ_th", "pq_stuff": "PQ_st"}


def class_ids(values: Sequence[str], id2label: dict[int, str]) -> list[int]:
    """Class ids from ids or names (e.g. `--stuff_classes 0 sky`), checked against `id2label`."""
    by_name = {name: index for index, name in id2label.items()}
    result = []
    for value in values:
        if str(value) in by_name:
            result.append(by_name[str(value)])
        elif str(value).lstrip("-").isdigit() and int(value) in id2label:
            result.append(int(value))
        else:
            raise ValueError(f"Unknown class {value!r}: give a class id in [0, {len(id2label)}) or a name of id2label.")
    return sorted(set(result))


def read_category_map(text: str | None) -> dict[int, int] | None:
    """`--category_map`: a JSON file or JSON text {dataset category id: class index}."""
    import json
    from pathlib import Path

    if text is None:
        return None
    raw = Path(text).read_text() if Path(text).is_file() else text
    try:
        mapping = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"--category_map must be a JSON file or JSON object text: {error}") from None
    if not isinstance(mapping, dict):
        raise ValueError("--category_map must be a JSON object {dataset category id: class index}.")
    return {int(key): int(value) for key, value in mapping.items()}


def _clean(value):
    return None if value is None or value != value else float(value)


def percent(value) -> str:
    return "nan" if value is None else f"{100 * value:.2f}"


def panoptic_metrics_to_json(results: dict, id2label: dict[int, str]) -> dict:
    """`pq`, `sq`, `rq`, `pq_things` / `sq_things` / `rq_things`, the same for stuff, and per-class values keyed by
    class name (NaN -> None)."""
    data = {key: _clean(results[key]) for key in ("pq", "sq", "rq")}
    for part in ("things", "stuff"):
        if part in results:
            data.update({f"{key}_{part}": _clean(results[part][key]) for key in ("pq", "sq", "rq")})
    data["per_class"] = {id2label[k]: {m: _clean(v) for m, v in values.items()}
                         for k, values in results.get("per_class", {}).items()}
    if results.get("warning"):
        data["warning"] = results["warning"]
    return data


def mask_ap_to_json(results: dict, id2label: dict[int, str]) -> dict:
    """`mask_ap` (AP over IoU 0.50:0.95), `mask_ap50`, `mask_ap75` and per-class AP keyed by class name."""
    data = {"mask_ap": _clean(results["ap"]), "mask_ap50": _clean(results["ap50"]),
            "mask_ap75": _clean(results["ap75"]),
            "per_class_ap": {id2label[k]: _clean(v) for k, v in results["per_class"].items()}}
    if results.get("warning"):
        data["warning"] = results["warning"]
    return data
