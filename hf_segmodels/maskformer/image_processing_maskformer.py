"""MaskFormer image processor: the shared PIL-backend preprocessing, the conversion of semantic / instance /
panoptic annotations into mask + class targets, and vectorised semantic / instance / panoptic post-processing."""

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageInput
from transformers.processing_utils import Unpack

from ..image_processing import (
    SegmentationImageProcessorKwargs,
    SemanticSegmentationImageProcessor,
    check_target_sizes,
)


def convert_segmentation_map_to_binary_masks(
    segmentation_map: np.ndarray,
    instance_id_to_semantic_id: dict[int, int] | None = None,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """One binary mask per id present in `segmentation_map` (H, W) other than `ignore_index`, ids in increasing
    order: (N, H, W) float32 masks and (N,) int64 class ids. Without `instance_id_to_semantic_id` the ids are class
    ids (a semantic map); with it, they are segment ids (an instance / panoptic map) mapped to their classes."""
    ids = np.unique(segmentation_map)
    ids = ids[ids != ignore_index]
    masks = (segmentation_map[None] == ids[:, None, None]).astype(np.float32)
    if instance_id_to_semantic_id is None:
        return masks, ids.astype(np.int64)
    missing = [int(i) for i in ids if int(i) not in instance_id_to_semantic_id]
    if missing:
        raise ValueError(
            f"Segment ids {missing} of the segmentation map are missing from `instance_id_to_semantic_id` "
            f"(which maps {sorted(instance_id_to_semantic_id)[:20]}...); map every segment id to its class id."
        )
    classes = np.array([instance_id_to_semantic_id[int(i)] for i in ids], dtype=np.int64)
    return masks, classes


def _rle(mask: np.ndarray) -> list[int]:
    """COCO-style run-length encoding (alternating start, length, 1-based starts) of a flattened binary mask."""
    pixels = np.concatenate([[0], mask.flatten().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return runs.tolist()


def resize_mask_logits(
    mask_logits: torch.Tensor, image_size=None, padded_size=None, target_size=None
) -> torch.Tensor:
    """Mask logits (N, h, w) at the original's output resolution, in the original's order
    (`MaskFormer.forward` + detectron2's `sem_seg_postprocess`): upsampled bilinearly (`align_corners=False`) to the
    padded input size, cropped to the image's own size, then resized bilinearly to `target_size` (when given and
    different). Without recorded sizes (outputs of another model) the logits are resized straight to `target_size`."""
    if padded_size is None or image_size is None:
        if target_size is None:
            return mask_logits
        return F.interpolate(mask_logits[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
    image_size, padded_size = tuple(image_size), tuple(padded_size)
    if tuple(mask_logits.shape[-2:]) != padded_size:
        mask_logits = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    mask_logits = mask_logits[:, : image_size[0], : image_size[1]]
    if target_size is not None and tuple(target_size) != image_size:
        mask_logits = F.interpolate(mask_logits[None], size=tuple(target_size), mode="bilinear", align_corners=False)[0]
    return mask_logits


def _weighted_argmax_and_areas(
    mask_logits: torch.Tensor, scores: torch.Tensor, resize, chunk_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """For N kept queries: mask_logits (N, h, w), scores (N,), `resize` mapping (n, h, w) logits to the output size
    -> (winners, areas), where winners (H, W) is the per-pixel argmax over queries of `score x sigmoid(resized logit)`
    and areas (N,) counts each query's pixels with `sigmoid >= 0.5` (the original's `panoptic_inference`).

    The (N, H, W) stack is never materialised: queries are resized and reduced `chunk_size` at a time into a running
    maximum (strictly greater values win, so ties go to the lower query index like `argmax`), which keeps the
    working set near the cache and the peak memory at chunk_size (H, W) maps."""
    best = winners = None
    areas = []
    for start in range(0, mask_logits.shape[0], chunk_size):
        chunk = resize(mask_logits[start : start + chunk_size])
        chunk = chunk.sigmoid()
        areas.append(torch.count_nonzero(chunk.flatten(1) >= 0.5, dim=1))
        chunk.mul_(scores[start : start + chunk_size].view(-1, 1, 1))
        values, indices = chunk.max(0)
        if best is None:
            best, winners = values, indices
        else:
            better = values > best
            best = torch.where(better, values, best)
            winners = torch.where(better, indices + start, winners)
    return winners, torch.cat(areas)


def _as_sizes(sizes, batch: int) -> list:
    if sizes is None:
        return [None] * batch
    if isinstance(sizes, torch.Tensor):
        sizes = sizes.tolist()
    return [tuple(int(v) for v in size) for size in sizes]


class MaskFormerImageProcessorKwargs(SegmentationImageProcessorKwargs, total=False):
    r"""
    size_divisor (`int`, *optional*, defaults to `self.size_divisor`):
        Pad the batch to its largest height and width rounded up to a multiple of this (0 or 1: no rounding).
    do_pad (`bool`, *optional*, defaults to `self.do_pad`):
        Pad the images of a batch to one size (and return `pixel_mask`).
    sem_seg_postprocessing_before_inference (`bool`, *optional*):
        Semantic post-processing resizes the mask logits to the output size before combining them (the original's
        order with `PANOPTIC_ON`), instead of combining at the input size and resizing the class scores.
    label_ids_to_fuse (`list[int]`, *optional*):
        Default `label_ids_to_fuse` of `post_process_panoptic_segmentation`: the stuff classes of a panoptic model.
    object_mask_threshold (`float`, *optional*):
        Default `threshold` of `post_process_panoptic_segmentation`: the release's `TEST.OBJECT_MASK_THRESHOLD`.
    overlap_threshold (`float`, *optional*):
        Default `overlap_mask_area_threshold` of `post_process_panoptic_segmentation`: its `TEST.OVERLAP_THRESHOLD`.
    return_mask_labels (`bool`, *optional*, defaults to `self.return_mask_labels`):
        For semantic maps, also return `mask_labels` / `class_labels` (one binary mask per class present, as
        transformers' `MaskFormerImageProcessor` does). Off by default: `labels` alone trains the model (it makes
        the same masks), and `Trainer`'s default collator cannot stack per-image lists of different lengths.
    ignore_index (`int`, *optional*, defaults to 255):
        The label value of pixels without a class (no mask covers them); fixed at 255, the value every model of this
        package ignores, and kept as an attribute for code written for transformers' processor.
    num_labels (`int`, *optional*):
        Number of classes (informational, as in transformers' processor).
    """

    size_divisor: int
    do_pad: bool
    sem_seg_postprocessing_before_inference: bool
    label_ids_to_fuse: list[int] | None
    object_mask_threshold: float | None
    overlap_threshold: float | None
    return_mask_labels: bool
    ignore_index: int
    num_labels: int | None


class SegmodelsMaskFormerImageProcessor(SemanticSegmentationImageProcessor):
    r"""Image processor of MaskFormer (PIL backend, no torchvision), following the original (facebookresearch/
    MaskFormer on detectron2) end to end.

    Preprocessing: the shorter side resized to 512 with the longer side at most 2048 (`ResizeShortestEdge` of the
    ADE20K semantic releases; converted checkpoints carry their release's test size, e.g. 800 / 1333 for COCO
    panoptic; the resized sides are rounded half up as detectron2's `ResizeShortestEdge` does, where transformers'
    processor truncates; an integer `size` is the shorter side, as in transformers' processor), pixels rescaled to
    [0, 1] and normalised with the ImageNet mean / std (detectron2's PIXEL_MEAN /
    PIXEL_STD / 255), then zero-padded (after normalisation, at the bottom and right) to the batch's largest size
    rounded up to a multiple of `size_divisor`, as the original's `ImageList.from_tensors(images,
    MASK_FORMER.SIZE_DIVISIBILITY)` does (32 for the semantic releases, 0 = no rounding for the panoptic ones;
    converted checkpoints record theirs; transformers' processor instead rounds the resized size to `size_divisor`
    and pads only to the batch's largest size). `pixel_mask` (B, H, W) marks the image pixels (1) and the padding (0). The
    original has no padding mask, so the network runs on the padded batch as it is; the model reads `pixel_mask`
    only to record each image's size for the post-processing, which crops the padding off.

    Annotations: semantic maps come back as `labels` (B, H, W) (padded with 255, the model turns them into one mask
    per class); instance / panoptic maps of segment ids, passed with `instance_id_to_semantic_id` (one dict for all
    images or one per image), come back as `mask_labels` (list of (N_i, H, W) float masks, padded with 0) and
    `class_labels` (list of (N_i,) int64). `do_reduce_labels` turns 0 into 255 (ignored) and shifts other ids down
    by one first; for instance maps the classes are then looked up with the original ids
    (`instance_id_to_semantic_id[id + 1] - 1`).

    Post-processing (`post_process_semantic_segmentation`, `post_process_instance_segmentation`,
    `post_process_panoptic_segmentation`) returns what transformers' `MaskFormerImageProcessor` returns, but computed
    as the original computes it (see each method; where the two differ, the original is followed), vectorised over
    the queries.
    """

    valid_kwargs = MaskFormerImageProcessorKwargs
    model_input_names = ["pixel_values", "pixel_mask"]
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 512, "longest_edge": 2048}
    size_divisor = 32
    do_pad = True
    sem_seg_postprocessing_before_inference = False
    label_ids_to_fuse = None
    object_mask_threshold = None
    overlap_threshold = None
    return_mask_labels = False
    ignore_index = 255
    num_labels = None

    def __init__(self, **kwargs: Unpack[MaskFormerImageProcessorKwargs]):
        super().__init__(**kwargs)
        if self.ignore_index != 255:
            raise ValueError(f"`ignore_index` must be 255 (the value the models ignore), got {self.ignore_index}.")

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Returns `pixel_values`, `pixel_mask` (when padding) and, for segmentation maps, `labels` (semantic maps)
        or `mask_labels` + `class_labels` (instance / panoptic maps with `instance_id_to_semantic_id`)."""
        if instance_id_to_semantic_id is not None and segmentation_maps is None:
            raise ValueError("`instance_id_to_semantic_id` was given without `segmentation_maps`.")
        image_like_kwargs = {"instance_id_to_semantic_id": instance_id_to_semantic_id}
        return super().preprocess(images, segmentation_maps, image_like_kwargs=image_like_kwargs, **kwargs)

    @staticmethod
    def padded_size(sizes: list[tuple[int, int]], size_divisor: int) -> tuple[int, int]:
        """The batch's largest (height, width), rounded up to a multiple of `size_divisor` when it is > 1
        (detectron2's `ImageList.from_tensors`)."""
        height, width = max(size[0] for size in sizes), max(size[1] for size in sizes)
        if size_divisor and size_divisor > 1:
            height, width = -(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor
        return height, width

    def _preprocess_image_like_inputs(
        self, images, segmentation_maps, do_convert_rgb, input_data_format, return_tensors,
        instance_id_to_semantic_id=None, **kwargs,
    ) -> BatchFeature:
        size_divisor = kwargs.pop("size_divisor", None)
        size_divisor = self.size_divisor if size_divisor is None else size_divisor
        do_pad = kwargs.pop("do_pad", None)
        do_pad = self.do_pad if do_pad is None else do_pad
        return_mask_labels = kwargs.pop("return_mask_labels", None)
        return_mask_labels = self.return_mask_labels if return_mask_labels is None else return_mask_labels
        for name in ("sem_seg_postprocessing_before_inference", "label_ids_to_fuse", "ignore_index", "num_labels",
                     "object_mask_threshold", "overlap_threshold"):
            kwargs.pop(name, None)
        processed = super()._preprocess_image_like_inputs(
            images, segmentation_maps, do_convert_rgb, input_data_format, None, **kwargs
        )
        data = dict(processed)
        if instance_id_to_semantic_id is not None:
            label_maps = data.pop("labels")
            mappings = instance_id_to_semantic_id
            if isinstance(mappings, dict):
                mappings = [mappings] * len(label_maps)
            if len(mappings) != len(label_maps):
                raise ValueError(
                    f"Got {len(mappings)} `instance_id_to_semantic_id` mappings for {len(label_maps)} segmentation "
                    "maps."
                )
            reduce = kwargs.get("do_reduce_labels", self.do_reduce_labels)
            mask_labels, class_labels, semantic_maps = [], [], []
            for label_map, mapping in zip(label_maps, mappings):
                mapping = {int(k): int(v) for k, v in mapping.items()}
                if reduce:
                    # ids were shifted down by one: look classes up with the original ids, then shift them too
                    mapping = {k - 1: v - 1 for k, v in mapping.items()}
                masks, classes = convert_segmentation_map_to_binary_masks(label_map, mapping)
                mask_labels.append(masks)
                class_labels.append(classes)
                # the semantic map of the same annotation (255 where no segment is), for metrics / Trainer
                semantic = np.full(label_map.shape, 255, dtype=np.int64)
                for mask, class_id in zip(masks, classes):
                    semantic[mask > 0] = class_id
                semantic_maps.append(semantic)
            data["mask_labels"], data["class_labels"], data["labels"] = mask_labels, class_labels, semantic_maps
        elif return_mask_labels and "labels" in data:
            targets = [convert_segmentation_map_to_binary_masks(label_map) for label_map in data["labels"]]
            data["mask_labels"] = [masks for masks, _ in targets]
            data["class_labels"] = [classes for _, classes in targets]
        if do_pad:
            self._pad_batch(data, size_divisor)
        elif return_tensors is not None:
            self._check_same_sizes(data["pixel_values"])
        list_keys = {"mask_labels", "class_labels"}
        encoded = BatchFeature(data={k: v for k, v in data.items() if k not in list_keys}, tensor_type=return_tensors)
        as_tensor = (lambda x: torch.from_numpy(x)) if return_tensors == "pt" else (lambda x: x)
        for key in list_keys & set(data):
            encoded[key] = [as_tensor(item) for item in data[key]]
        return encoded

    def _pad_batch(self, data: dict, size_divisor: int) -> None:
        """Pads `pixel_values` (zeros), `labels` (255) and `mask_labels` (zeros) in place at the bottom / right to
        the common size and adds `pixel_mask` (1 = image, 0 = padding)."""
        images = data["pixel_values"]
        sizes = [tuple(image.shape[-2:]) for image in images]
        height, width = self.padded_size(sizes, size_divisor)

        def pad(array: np.ndarray, value) -> np.ndarray:
            if tuple(array.shape[-2:]) == (height, width):
                return array
            padded = np.full((*array.shape[:-2], height, width), value, dtype=array.dtype)
            padded[..., : array.shape[-2], : array.shape[-1]] = array
            return padded

        data["pixel_values"] = [pad(image, 0) for image in images]
        masks = np.zeros((len(images), height, width), dtype=np.int64)
        for index, (image_height, image_width) in enumerate(sizes):
            masks[index, :image_height, :image_width] = 1
        data["pixel_mask"] = list(masks)
        if "labels" in data:
            data["labels"] = [pad(label, 255) for label in data["labels"]]
        if "mask_labels" in data:
            data["mask_labels"] = [pad(masks_, 0) for masks_ in data["mask_labels"]]

    # ------------------------------------------------------------------------------------------------------------
    # Post-processing
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def _target_sizes(target_sizes, batch_size: int):
        if target_sizes is None:
            return [None] * batch_size
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != batch_size:
            raise ValueError(
                f"Got {len(target_sizes)} target sizes for a batch of {batch_size}; pass one (height, width) per image."
            )
        sizes = [tuple(int(v) for v in size) for size in target_sizes]
        check_target_sizes(sizes)
        return sizes

    @staticmethod
    def _recorded_sizes(outputs, batch: int) -> tuple[list, list]:
        """Per image (height, width) before padding and the padded input size, as the model recorded them (None for
        outputs that do not carry them, e.g. transformers' MaskFormer)."""
        image_sizes = getattr(outputs, "image_sizes", None)
        padded_sizes = getattr(outputs, "padded_sizes", None)
        if image_sizes is None or padded_sizes is None:
            return [None] * batch, [None] * batch
        return _as_sizes(image_sizes, batch), _as_sizes(padded_sizes, batch)

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes=None,
        return_segmentation_scores: bool = False,
        sem_seg_postprocessing_before_inference: bool | None = None,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Semantic maps: a list of B (H, W) int64 class maps, the argmax of the original's semantic scores
        `sum_q softmax(class_logits_q)[:K] * sigmoid(mask_logits_q)`.

        The original's order is followed (transformers instead combines at the mask resolution, 1/4 of the input,
        and resizes the scores, which moves the argmax on many boundary pixels): the mask logits are upsampled
        bilinearly to the padded input size and cropped to the image's own size (`image_sizes` / `padded_sizes`
        recorded by the model from `pixel_mask`); then either the scores are combined there and resized to the
        target size (the semantic releases), or, with `sem_seg_postprocessing_before_inference` (the processor's
        setting by default; set for panoptic models, as the original's `PANOPTIC_ON` forces it), the logits are
        resized to the target size first and combined there.

        Args:
            outputs: model outputs with `class_queries_logits` (B, Q, K + 1) and `masks_queries_logits` (B, Q, h, w)
                (and `image_sizes` / `padded_sizes`; without them the masks are taken to cover the whole image).
            target_sizes: optional list of B (height, width); default: each image's own (unpadded) size.
            return_segmentation_scores: as in transformers: a list of `SemanticSegmentationPostProcessorOutput` with
                `segmentation` (H, W) and `segmentation_scores` (num_labels, H, W), the semantic scores above.
        """
        if sem_seg_postprocessing_before_inference is None:
            sem_seg_postprocessing_before_inference = self.sem_seg_postprocessing_before_inference
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        batch = class_logits.shape[0]
        image_sizes, padded_sizes = self._recorded_sizes(outputs, batch)
        results = []
        for index, target_size in enumerate(self._target_sizes(target_sizes, batch)):
            classes = class_logits[index].softmax(-1)[:, :-1]
            if sem_seg_postprocessing_before_inference:
                masks = resize_mask_logits(mask_logits[index], image_sizes[index], padded_sizes[index], target_size)
                scores = torch.einsum("qc,qhw->chw", classes, masks.sigmoid())
            else:
                masks = resize_mask_logits(mask_logits[index], image_sizes[index], padded_sizes[index])
                scores = torch.einsum("qc,qhw->chw", classes, masks.sigmoid())
                if target_size is not None and tuple(scores.shape[-2:]) != target_size:
                    scores = F.interpolate(scores[None], size=target_size, mode="bilinear", align_corners=False)[0]
            segmentation = scores.argmax(dim=0)
            results.append(
                SemanticSegmentationPostProcessorOutput(data={"segmentation": segmentation, "segmentation_scores": scores})
                if return_segmentation_scores
                else segmentation
            )
        return results

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float | None = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = 0.8,
        target_sizes=None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
    ) -> list[dict]:
        """Instance segmentation: the Q best (query, class) pairs by class probability; each keeps its query's mask
        (probability > `mask_threshold`), scored by class probability x mean mask probability inside the mask, and
        is kept when its mask is not empty and its score reaches `threshold`. Later segments overwrite earlier ones
        where they overlap. `overlap_mask_area_threshold` is accepted for API compatibility and unused (as in
        transformers).

        The masks are evaluated at the output size, after the original's resizing of the mask logits (upsampled to
        the padded input, cropped to the image, resized to the target size); transformers thresholds them at 1/4
        resolution and resizes the binary masks (nearest).

        Returns per image `{"segmentation": (H, W) int32 segment ids (-1 = none) | RLE list |
        (N, H, W) binary maps, "segments_info": [{"id", "label_id", "was_fused", "score"}]}`.
        """
        if threshold is None:  # pipeline() passes None for a threshold its caller did not give
            threshold = 0.5
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps can not be both set to True.")
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        batch, num_queries = class_logits.shape[:2]
        num_classes = class_logits.shape[-1] - 1
        image_sizes, padded_sizes = self._recorded_sizes(outputs, batch)
        results = []
        for index, target_size in enumerate(self._target_sizes(target_sizes, batch)):
            scores = class_logits[index].softmax(-1)[:, :-1]
            top_scores, top_indices = scores.flatten().topk(num_queries, sorted=False)
            labels = top_indices % num_classes
            queries = torch.div(top_indices, num_classes, rounding_mode="floor")
            unique_queries, inverse = torch.unique(queries, return_inverse=True)
            resized = resize_mask_logits(
                mask_logits[index][unique_queries], image_sizes[index], padded_sizes[index], target_size
            )
            probabilities = resized.sigmoid()
            binary_unique = probabilities > mask_threshold
            binary_float = binary_unique.to(probabilities.dtype).flatten(1)
            mask_scores = (probabilities.flatten(1) * binary_float).sum(1) / (binary_float.sum(1) + 1e-6)
            pred_scores = top_scores * mask_scores[inverse]
            nonempty = binary_unique.flatten(1).any(1)[inverse]
            keep = nonempty & (pred_scores >= threshold)
            kept_masks = binary_unique[inverse[keep]]
            order = torch.arange(1, kept_masks.shape[0] + 1, dtype=torch.int32, device=kept_masks.device)
            if kept_masks.shape[0]:
                segmentation = torch.where(kept_masks, order[:, None, None], 0).amax(0) - 1
            else:
                segmentation = torch.full(binary_unique.shape[-2:], -1, dtype=torch.int32, device=binary_unique.device)
            segments = [
                {"id": segment_id, "label_id": label, "was_fused": False, "score": round(score, 6)}
                for segment_id, (label, score) in enumerate(zip(labels[keep].tolist(), pred_scores[keep].tolist()))
            ]
            if return_coco_annotation:
                segmentation = [_rle((segmentation == value).cpu().numpy()) for value in torch.unique(segmentation)]
            elif return_binary_maps and kept_masks.shape[0]:
                segmentation = kept_masks.to(probabilities.dtype)
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float | None = None,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes=None,
    ) -> list[dict]:
        """Panoptic segmentation, the original's `panoptic_inference` (`threshold` = its OBJECT_MASK_THRESHOLD,
        `overlap_mask_area_threshold` = its OVERLAP_THRESHOLD, `label_ids_to_fuse` = the stuff classes).

        The mask logits are first brought to the output size in the original's order (upsampled bilinearly to the
        padded input, cropped to the image's own size, resized to the target size). Then: score and label of a
        query = max / argmax of its softmax over the K + 1 classes INCLUDING no-object (a query whose best entry is
        no-object is dropped), kept when score > `threshold` (strict); every pixel goes to the kept query with the
        largest score x sigmoid(mask) (lowest index on ties); a kept query becomes a segment when the pixels it wins
        cover at least `overlap_mask_area_threshold` of its area with sigmoid >= 0.5 (both areas non-zero); later
        queries of a class in `label_ids_to_fuse` (stuff) are painted with that class's first segment id and add no
        entry, other classes (things) are never merged. Ids start at 1; 0 = no segment.

        Where transformers differs, the original is followed: transformers resizes the sigmoid probabilities (not the
        logits) straight to the target size without cropping the padding, measures the overlap against the
        score-weighted probabilities >= `mask_threshold` with a strict `>`, fills the map with -1 when no query is
        kept (here: 0), and can reuse ids after a fused segment. `mask_threshold` is accepted for API compatibility;
        the original's 0.5 is used.

        `label_ids_to_fuse` defaults to the processor's `label_ids_to_fuse` (converted panoptic checkpoints record
        their dataset's stuff classes there), because `pipeline()` passes none; `threshold` and
        `overlap_mask_area_threshold` default to the processor's `object_mask_threshold` / `overlap_threshold` (the
        release's test settings, recorded by the converter), else 0.5 / 0.8.

        Returns per image `{"segmentation": (H, W) int32 (0 = no segment), "segments_info": [{"id", "label_id",
        "was_fused", "score"}]}`.
        """
        if label_ids_to_fuse is None:
            label_ids_to_fuse = self.label_ids_to_fuse
        if threshold is None:
            threshold = self.object_mask_threshold if self.object_mask_threshold is not None else 0.5
        if overlap_mask_area_threshold is None:
            overlap_mask_area_threshold = self.overlap_threshold if self.overlap_threshold is not None else 0.8
        fuse = set(int(label) for label in (label_ids_to_fuse or ()))
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        batch = class_logits.shape[0]
        num_labels = class_logits.shape[-1] - 1
        image_sizes, padded_sizes = self._recorded_sizes(outputs, batch)
        pred_scores, pred_labels = class_logits.softmax(-1).max(-1)
        results = []
        for index, target_size in enumerate(self._target_sizes(target_sizes, batch)):
            keep = pred_labels[index].ne(num_labels) & (pred_scores[index] > threshold)
            logits, scores, labels = mask_logits[index][keep], pred_scores[index][keep], pred_labels[index][keep]

            def resize(chunk, index=index, target_size=target_size):
                return resize_mask_logits(chunk, image_sizes[index], padded_sizes[index], target_size)

            num_kept = logits.shape[0]
            if num_kept == 0:
                size = tuple(resize(mask_logits[index][:1]).shape[-2:])
                segmentation = torch.zeros(size, dtype=torch.int32, device=mask_logits.device)
                results.append({"segmentation": segmentation, "segments_info": []})
                continue
            winners, original_area = _weighted_argmax_and_areas(logits, scores, resize)
            area = torch.bincount(winners.flatten(), minlength=num_kept)
            exists = (area > 0) & (original_area > 0)
            # the original compares Python floats: mask_area / original_area < overlap_threshold -> dropped
            exists &= area.double() / original_area.clamp(min=1).double() >= overlap_mask_area_threshold

            # segment ids: a new id per existing query, except later queries of a fused class reuse the first's
            label_list, exists_list = labels.tolist(), exists.tolist()
            segment_of_query = [0] * num_kept
            fused_ids: dict[int, int] = {}
            segments = []
            score_list = scores.tolist()
            for k in range(num_kept):
                if not exists_list[k]:
                    continue
                label = label_list[k]
                if label in fuse and label in fused_ids:
                    segment_of_query[k] = fused_ids[label]
                    continue
                segment_id = len(segments) + 1
                segment_of_query[k] = segment_id
                if label in fuse:
                    fused_ids[label] = segment_id
                segments.append(
                    {"id": segment_id, "label_id": label, "was_fused": label in fuse, "score": round(score_list[k], 6)}
                )
            lookup = torch.tensor(segment_of_query, dtype=torch.int32, device=winners.device)
            results.append({"segmentation": lookup[winners], "segments_info": segments})
        return results


# A saved `preprocessor_config.json` names the class in "image_processor_type", and transformers resolves that name
# (its own classes first when hf_segmodels is not imported). The class has a name of its own so that a saved folder
# loads as this class (with hf_segmodels imported, or through `auto_map` with `trust_remote_code=True`) and never as
# transformers' `MaskFormerImageProcessor`; the public name (README, docs/ARCHITECTURE.md) is an alias.
MaskFormerImageProcessor = SegmodelsMaskFormerImageProcessor
SegmodelsMaskFormerImageProcessorKwargs = MaskFormerImageProcessorKwargs  # the name transformers looks for


__all__ = ["MaskFormerImageProcessor", "SegmodelsMaskFormerImageProcessor", "convert_segmentation_map_to_binary_masks", "resize_mask_logits"]
