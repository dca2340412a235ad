"""MaskFormer image processor: the shared PIL-backend preprocessing, the conversion of semantic / instance /
panoptic annotations into mask + class targets, and vectorised semantic / instance / panoptic post-processing."""

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageInput

from ..image_processing import SemanticSegmentationImageProcessor, resized_class_scores
from .modeling_maskformer import semantic_scores


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


def _weighted_argmax_and_areas(
    mask_probs: torch.Tensor, scores: torch.Tensor, target_size, mask_threshold: float, chunk_size: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """For N kept queries: mask_probs (N, h, w) in [0, 1], scores (N,) -> (winners, areas), where winners (H, W) is
    the per-pixel argmax over queries of `score x mask probability` (resized bilinearly to `target_size` when given)
    and areas (N,) counts each query's pixels with (weighted) probability >= `mask_threshold`, as transformers'
    `compute_segments` does on the full (N, H, W) stack.

    The stack is never materialised: queries are resized and reduced `chunk_size` at a time into a running maximum
    (strictly greater values win, so ties go to the lower query index like `argmax`), which keeps the working set
    near the cache and the peak memory at chunk_size (H, W) maps: ~2.5x faster than resize-then-argmax at 512x512."""
    best = winners = None
    areas = []
    for start in range(0, mask_probs.shape[0], chunk_size):
        chunk = mask_probs[start : start + chunk_size]
        if target_size is not None:
            chunk = F.interpolate(chunk[None], size=target_size, mode="bilinear", align_corners=False)[0]
        else:
            chunk = chunk.clone()
        chunk.mul_(scores[start : start + chunk_size].view(-1, 1, 1))
        areas.append(torch.count_nonzero(chunk.flatten(1) >= mask_threshold, dim=1))
        values, indices = chunk.max(0)
        if best is None:
            best, winners = values, indices
        else:
            better = values > best
            best = torch.where(better, values, best)
            winners = torch.where(better, indices + start, winners)
    return winners, torch.cat(areas)


class MaskFormerImageProcessor(SemanticSegmentationImageProcessor):
    r"""Image processor of MaskFormer (PIL backend, no torchvision).

    Preprocessing follows the original (detectron2) test protocol of the ADE20K semantic models: the shorter side
    resized to 512 with the longer side at most 2048 (`ResizeShortestEdge`; COCO panoptic models use 800 / 1333),
    pixels rescaled to [0, 1] and normalised with the ImageNet mean / std (detectron2's PIXEL_MEAN / PIXEL_STD / 255).
    No padding is applied here: the model accepts any size and `full_resolution_logits` pads to a multiple of 32 as
    the original does.

    Annotations: semantic maps come back as `labels` (B, H, W) (the model turns them into one mask per class);
    instance / panoptic maps of segment ids, passed with `instance_id_to_semantic_id` (one dict for all images or
    one per image), come back as `mask_labels` (list of (N_i, H, W) float masks) and `class_labels` (list of (N_i,)
    int64). `do_reduce_labels` turns 0 into 255 (ignored) and shifts other ids down by one first; for instance maps
    the classes are then looked up with the original ids (`instance_id_to_semantic_id[id + 1] - 1`).

    Post-processing (`post_process_semantic_segmentation`, `post_process_instance_segmentation`,
    `post_process_panoptic_segmentation`) returns what transformers' `MaskFormerImageProcessor` returns, computed
    with tensor operations over all queries at once.
    """

    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 512, "longest_edge": 2048}

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        instance_id_to_semantic_id: list[dict[int, int]] | dict[int, int] | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Returns `pixel_values` and, for segmentation maps, `labels` (semantic maps) or `mask_labels` +
        `class_labels` (instance / panoptic maps with `instance_id_to_semantic_id`)."""
        if instance_id_to_semantic_id is not None and segmentation_maps is None:
            raise ValueError("`instance_id_to_semantic_id` was given without `segmentation_maps`.")
        image_like_kwargs = {"instance_id_to_semantic_id": instance_id_to_semantic_id}
        return super().preprocess(images, segmentation_maps, image_like_kwargs=image_like_kwargs, **kwargs)

    def _preprocess_image_like_inputs(
        self, images, segmentation_maps, do_convert_rgb, input_data_format, return_tensors,
        instance_id_to_semantic_id=None, **kwargs,
    ) -> BatchFeature:
        if instance_id_to_semantic_id is None:
            return super()._preprocess_image_like_inputs(
                images, segmentation_maps, do_convert_rgb, input_data_format, return_tensors, **kwargs
            )
        processed = super()._preprocess_image_like_inputs(
            images, segmentation_maps, do_convert_rgb, input_data_format, None, **kwargs
        )
        label_maps = processed.pop("labels")
        mappings = instance_id_to_semantic_id
        if isinstance(mappings, dict):
            mappings = [mappings] * len(label_maps)
        if len(mappings) != len(label_maps):
            raise ValueError(
                f"Got {len(mappings)} `instance_id_to_semantic_id` mappings for {len(label_maps)} segmentation maps."
            )
        reduce = kwargs.get("do_reduce_labels", self.do_reduce_labels)
        mask_labels, class_labels = [], []
        for label_map, mapping in zip(label_maps, mappings):
            mapping = {int(k): int(v) for k, v in mapping.items()}
            if reduce:
                # ids were shifted down by one: look classes up with the original ids, then shift them too
                mapping = {k - 1: v - 1 for k, v in mapping.items()}
            masks, classes = convert_segmentation_map_to_binary_masks(label_map, mapping)
            mask_labels.append(masks)
            class_labels.append(classes)
        if return_tensors is not None:
            self._check_same_sizes(processed["pixel_values"])
        encoded = BatchFeature(data=dict(processed), tensor_type=return_tensors)
        as_tensor = (lambda x: torch.from_numpy(x)) if return_tensors == "pt" else (lambda x: x)
        encoded["mask_labels"] = [as_tensor(m) for m in mask_labels]
        encoded["class_labels"] = [as_tensor(c) for c in class_labels]
        return encoded

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
        return [tuple(int(v) for v in size) for size in target_sizes]

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Semantic maps: a list of B (H, W) int64 class maps, the argmax of the semantic scores (sum over queries of
        class probability x mask probability) resized bilinearly to `target_sizes` when given.

        Args:
            outputs: model outputs with `class_queries_logits` (B, Q, K + 1) and `masks_queries_logits` (B, Q, h, w).
            target_sizes: optional list of B (height, width).
        """
        scores = semantic_scores(outputs.class_queries_logits, outputs.masks_queries_logits)
        return [item.argmax(dim=0) for item in resized_class_scores(scores, target_sizes)]

    def post_process_instance_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes=None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
    ) -> list[dict]:
        """Instance segmentation: the Q best (query, class) pairs by class probability; each keeps its query's mask
        (probability > `mask_threshold`), scored by class probability x mean mask probability inside the mask, and
        is kept when its mask is not empty (after nearest resizing to the target size) and its score reaches
        `threshold`. Later segments overwrite earlier ones where they overlap. `overlap_mask_area_threshold` is
        accepted for API compatibility and unused (as in transformers).

        Returns per image `{"segmentation": (H, W) int32 segment ids (-1 = none) | RLE list |
        (N, H, W) binary maps, "segments_info": [{"id", "label_id", "was_fused", "score"}]}`.
        """
        if return_coco_annotation and return_binary_maps:
            raise ValueError("return_coco_annotation and return_binary_maps can not be both set to True.")
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        batch, num_queries = class_logits.shape[:2]
        num_classes = class_logits.shape[-1] - 1
        mask_logit_threshold = float(np.log(mask_threshold / (1 - mask_threshold))) if 0 < mask_threshold < 1 else None
        results = []
        for index, target_size in enumerate(self._target_sizes(target_sizes, batch)):
            scores = class_logits[index].softmax(-1)[:, :-1]
            top_scores, top_indices = scores.flatten().topk(num_queries, sorted=False)
            labels = top_indices % num_classes
            queries = torch.div(top_indices, num_classes, rounding_mode="floor")
            query_masks = mask_logits[index][queries]
            if mask_logit_threshold is not None:
                binary = query_masks > mask_logit_threshold
            else:
                binary = query_masks.sigmoid() > mask_threshold
            binary_float = binary.to(query_masks.dtype).flatten(1)
            mask_scores = (query_masks.sigmoid().flatten(1) * binary_float).sum(1) / (binary_float.sum(1) + 1e-6)
            pred_scores = top_scores * mask_scores
            if target_size is not None:
                binary = F.interpolate(binary[None].to(query_masks.dtype), size=target_size, mode="nearest")[0] > 0
            keep = binary.flatten(1).any(1) & (pred_scores >= threshold)
            kept_masks = binary[keep]
            order = torch.arange(1, kept_masks.shape[0] + 1, dtype=torch.int32, device=binary.device)
            if kept_masks.shape[0]:
                segmentation = torch.where(kept_masks, order[:, None, None], 0).amax(0) - 1
            else:
                segmentation = torch.full(binary.shape[-2:], -1, dtype=torch.int32, device=binary.device)
            segments = [
                {"id": segment_id, "label_id": label, "was_fused": False, "score": round(score, 6)}
                for segment_id, (label, score) in enumerate(zip(labels[keep].tolist(), pred_scores[keep].tolist()))
            ]
            if return_coco_annotation:
                segmentation = [_rle((segmentation == value).cpu().numpy()) for value in torch.unique(segmentation)]
            elif return_binary_maps and kept_masks.shape[0]:
                segmentation = kept_masks.to(query_masks.dtype)
            results.append({"segmentation": segmentation, "segments_info": segments})
        return results

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes=None,
    ) -> list[dict]:
        """Panoptic segmentation (the original's `panoptic_inference`, with transformers' conventions): queries
        whose best class is a real class with probability > `threshold` are kept; their mask probabilities (resized
        bilinearly to the target size) weighted by the class probability are arg-maxed per pixel. A query becomes a
        segment when the pixels it wins cover more than `overlap_mask_area_threshold` of its own (weighted)
        probability >= `mask_threshold` area. Segments of a class in `label_ids_to_fuse` share one id and one
        `segments_info` entry (scored by the first such query).

        Unlike transformers, ids are never reused after a fused segment (transformers can give a later segment the
        id of an earlier one and lists fused segments once per query).

        Returns per image `{"segmentation": (H, W) int32 (0 = no segment, -1 everywhere when no query is kept),
        "segments_info": [{"id", "label_id", "was_fused", "score"}]}`.
        """
        fuse = set(int(label) for label in (label_ids_to_fuse or ()))
        class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
        batch = class_logits.shape[0]
        num_labels = class_logits.shape[-1] - 1
        pred_scores, pred_labels = class_logits.softmax(-1).max(-1)
        mask_probs = mask_logits.sigmoid()
        results = []
        for index, target_size in enumerate(self._target_sizes(target_sizes, batch)):
            keep = pred_labels[index].ne(num_labels) & (pred_scores[index] > threshold)
            probs, scores, labels = mask_probs[index][keep], pred_scores[index][keep], pred_labels[index][keep]
            size = target_size if target_size is not None else tuple(probs.shape[-2:])
            if probs.shape[0] == 0:
                segmentation = torch.full(size, -1, dtype=torch.int32, device=mask_logits.device)
                results.append({"segmentation": segmentation, "segments_info": []})
                continue
            winners, original_area = _weighted_argmax_and_areas(probs, scores, target_size, mask_threshold)
            num_kept = probs.shape[0]
            area = torch.bincount(winners.flatten(), minlength=num_kept)
            exists = (area > 0) & (original_area > 0)
            exists &= area / original_area.clamp(min=1) > overlap_mask_area_threshold

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


__all__ = ["MaskFormerImageProcessor", "convert_segmentation_map_to_binary_masks"]
