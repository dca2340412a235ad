"""The image processor shared by the four architectures (PIL/NumPy backend, no torchvision) and the
post-processing helpers that turn model outputs into semantic and panoptic maps."""

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict, is_scaled_image
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import TensorType, logging

from .remote_code import RemoteCodeImageProcessorMixin

logger = logging.get_logger(__name__)

# PIL modes that hold more than 8 bits per pixel; they are mapped to [0, 255] before the usual 1/255 rescale.
_HIGH_BIT_DEPTH_PIL_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}


class SegmentationImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether to map label 0 (background / "other" in ADE20K) to 255 (ignored) and shift every other label down by
        one, as ADE20K needs.
    """

    do_reduce_labels: bool


def _to_channels_last_rgb(image, convert_rgb: bool = True) -> np.ndarray | PIL.Image.Image:
    """Brings grayscale, grayscale+alpha, RGBA and 16-bit images, as PIL images or as HWC / CHW / HW arrays, to an
    (H, W, 3) RGB array (uint8 or float in [0, 255]); 8-bit PIL images are left to transformers' `convert_to_rgb`.
    With `convert_rgb=False` (`do_convert_rgb=False`) the channels are kept as they are, only brought last."""
    if isinstance(image, PIL.Image.Image) and not convert_rgb:
        image = np.asarray(image)
    if isinstance(image, PIL.Image.Image):
        if image.mode in _HIGH_BIT_DEPTH_PIL_MODES:
            array = np.asarray(image, dtype=np.float32) * (255.0 / _HIGH_BIT_DEPTH_PIL_MODES[image.mode])
            return np.repeat(array[..., None], 3, axis=-1)
        if image.mode in ("I", "F"):
            raise ValueError(
                f"PIL images of mode {image.mode!r} (32-bit) have no defined pixel range; convert them to 8-bit "
                "('RGB'/'L') or 16-bit ('I;16') first."
            )
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"An image must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dimensions, got shape {image.shape}.")
    if image.shape[-1] not in (1, 2, 3, 4) and image.shape[0] in (1, 2, 3, 4):
        image = np.moveaxis(image, 0, -1)
    channels = image.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise ValueError(
            f"Cannot find the channel axis of an image of shape {image.shape}: expected 1 (gray), 2 (gray+alpha), "
            "3 (RGB) or 4 (RGBA) channels first or last."
        )
    if image.dtype == np.uint16:
        image = image.astype(np.float32) * (255.0 / 65535.0)
    elif image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if not convert_rgb:
        return image
    if channels in (1, 2):
        image = np.repeat(image[..., :1], 3, axis=-1)
    elif channels == 4:
        image = image[..., :3]
    return image


def _looks_rescaled(image) -> bool:
    """A non-empty float array or tensor that transformers' `is_scaled_image` finds in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return isinstance(image, np.ndarray) and image.dtype.kind == "f" and image.size > 0 and is_scaled_image(image)


def crop_to_pixel_mask(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """`pixel_values` (..., H, W) cut to the extent of one image's `pixel_mask` (H, W): the bottom / right padding of a
    padding processor (MaskFormer's) removed."""
    return pixel_values[..., : int(pixel_mask.any(1).sum()), : int(pixel_mask.any(0).sum())]


def _as_image_list(images) -> list:
    """One image (PIL, or a 2-D / 3-D array) or a batch (list, or a 4-D array) -> a list of images."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


class SemanticSegmentationImageProcessor(RemoteCodeImageProcessorMixin, PilBackend):
    r"""Resize, rescale and normalise images (and resize + reduce their label maps) the way the original test
    protocol of each architecture does; subclasses set the normalisation and sizes.

    `size` may be `{"height", "width"}` (fixed size), `{"shortest_edge"}` or `{"shortest_edge", "longest_edge"}`,
    the latter two with mmsegmentation's `keep_ratio` rule: scale = min(longest / long side, shortest / short side),
    new side = int(side * scale + 0.5). Images are resized as the architecture's original test pipeline does
    (`resize_backend`): OpenCV-style bilinear for the mmsegmentation-based originals, PIL's for detectron2's.

    Accepts PIL images of any mode (grayscale, RGBA, 16-bit) and NumPy / torch arrays in HWC, CHW or HW layout;
    every image becomes 3-channel RGB. Segmentation maps (PIL or arrays of class ids) are resized with nearest
    neighbour and returned as `labels` (int64, 255 = ignore).
    """

    valid_kwargs = SegmentationImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = (0.5, 0.5, 0.5)
    image_std = (0.5, 0.5, 0.5)
    size = {"shortest_edge": 512, "longest_edge": 2048}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_reduce_labels = False
    # How images are resized: "pil" (PIL's bilinear filter, which antialiases when it shrinks; detectron2's test
    # resize) or "opencv" (cv2.INTER_LINEAR's bilinear interpolation without antialiasing; mmsegmentation's).
    resize_backend = "pil"

    def __init__(self, **kwargs: Unpack[SegmentationImageProcessorKwargs]):
        super().__init__(**kwargs)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[SegmentationImageProcessorKwargs],
    ) -> BatchFeature:
        """Returns a `BatchFeature` with `pixel_values` (B, 3, H, W) and, when `segmentation_maps` are given,
        `labels` (B, H, W) int64."""
        images = _as_image_list(images)
        if not images:
            raise ValueError("No images to process: got an empty list (pass at least one image).")
        for index, image in enumerate(images):
            size = image.size[::-1] if isinstance(image, PIL.Image.Image) else np.shape(image)
            if 0 in tuple(size):
                raise ValueError(f"Image {index} is empty (shape {tuple(size)}).")
        if kwargs.get("do_rescale", self.do_rescale) and any(_looks_rescaled(image) for image in images):
            logger.warning_once(
                "It looks like you are trying to rescale already rescaled images (float values in [0, 1]). If the "
                "input images have pixel values between 0 and 1, set `do_rescale=False` to avoid rescaling them again."
            )
        convert_rgb = kwargs.get("do_convert_rgb")
        convert_rgb = self.do_convert_rgb if convert_rgb is None else convert_rgb
        images = [_to_channels_last_rgb(image, convert_rgb) for image in images]
        return super().preprocess(images, segmentation_maps, **kwargs)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs) -> np.ndarray:
        convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        image = _to_channels_last_rgb(image, convert_rgb)
        if isinstance(image, np.ndarray):
            return np.moveaxis(image, -1, 0)
        return super().process_image(image, do_convert_rgb=True, input_data_format=input_data_format)

    @staticmethod
    def _label_map_to_array(segmentation_map) -> np.ndarray:
        if isinstance(segmentation_map, PIL.Image.Image):
            segmentation_map = np.array(segmentation_map)
        elif isinstance(segmentation_map, torch.Tensor):
            segmentation_map = segmentation_map.detach().cpu().numpy()
        segmentation_map = np.asarray(segmentation_map)
        if segmentation_map.ndim == 3 and 1 in (segmentation_map.shape[0], segmentation_map.shape[-1]):
            segmentation_map = segmentation_map.squeeze(0 if segmentation_map.shape[0] == 1 else -1)
        if segmentation_map.ndim != 2:
            raise ValueError(
                f"A segmentation map must be a (H, W) array of class ids, got shape {segmentation_map.shape}."
            )
        if segmentation_map.dtype.kind not in "iub":
            raise ValueError(f"A segmentation map must hold integer class ids, got dtype {segmentation_map.dtype}.")
        return segmentation_map.astype(np.int64)

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool,
        input_data_format: ChannelDimension,
        return_tensors: str | TensorType | None,
        **kwargs,
    ) -> BatchFeature:
        images = self._prepare_image_like_inputs(
            images=images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        do_reduce_labels = kwargs.pop("do_reduce_labels")
        data = {"pixel_values": self._preprocess(images, do_reduce_labels=False, **kwargs)}
        if segmentation_maps is not None:
            if not isinstance(segmentation_maps, (list, tuple)):
                segmentation_maps = [segmentation_maps]
            if len(segmentation_maps) != len(images):
                raise ValueError(
                    f"Got {len(images)} images but {len(segmentation_maps)} segmentation maps; pass one map per image."
                )
            maps = [self._label_map_to_array(m)[None] for m in segmentation_maps]
            for index, (image, label_map) in enumerate(zip(images, maps)):
                if image.shape[-2:] != label_map.shape[-2:]:
                    raise ValueError(
                        f"Image {index} has size {tuple(image.shape[-2:])} but its segmentation map has size "
                        f"{tuple(label_map.shape[-2:])}; they must match."
                    )
            label_kwargs = {
                **kwargs,
                "do_reduce_labels": do_reduce_labels,
                "do_normalize": False,
                "do_rescale": False,
                "resample": PILImageResampling.NEAREST,
            }
            data["labels"] = [m[0].astype(np.int64) for m in self._preprocess(maps, **label_kwargs)]
        if return_tensors is not None:
            self._check_same_sizes(data["pixel_values"])
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _check_same_sizes(images: list[np.ndarray]) -> None:
        sizes = {tuple(image.shape[-2:]) for image in images}
        if len(sizes) > 1:
            raise ValueError(
                f"The processed images have different sizes {sorted(sizes)} and cannot be stacked into one tensor. "
                "Pass a fixed size (size={'height': H, 'width': W}), process the images one at a time, or use "
                "return_tensors=None."
            )

    @staticmethod
    def reduce_label(label_map: np.ndarray) -> np.ndarray:
        """0 -> 255 (ignored), k -> k - 1, 255 stays 255."""
        reduced = label_map.astype(np.int64) - 1
        reduced[(label_map == 0) | (label_map == 255)] = 255
        return reduced

    def resize(self, image: np.ndarray, size: SizeDict, resample=None, **kwargs) -> np.ndarray:
        if size.shortest_edge:
            # mmsegmentation's / detectron2's keep-ratio rule: scale = min(longest / long side, shortest / short
            # side) (no long-side limit without `longest_edge`), new side = int(side * scale + 0.5).
            height, width = image.shape[-2:]
            scale = size.shortest_edge / min(height, width)
            if size.longest_edge:
                scale = min(size.longest_edge / max(height, width), scale)
            size = SizeDict(height=int(height * scale + 0.5), width=int(width * scale + 0.5))
        if image.dtype == np.int64:
            # PIL cannot resize int64 arrays; label maps fit in int32.
            return super().resize(image.astype(np.int32), size, resample=resample, **kwargs).astype(np.int64)
        if self.resize_backend == "opencv" and resample in (None, PILImageResampling.BILINEAR) and image.ndim == 3:
            return opencv_bilinear_resize(image, (size.height, size.width))
        return super().resize(image, size, resample=resample, **kwargs)

    def _rescale_normalize_table(
        self, channels: int, do_rescale: bool, rescale_factor: float, do_normalize: bool, image_mean, image_std
    ) -> np.ndarray:
        """(channels, 256) float32: the rescaled and normalised value of every 8-bit level of every channel. An 8-bit
        (C, H, W) image is then converted with one table look-up per pixel instead of several float passes; the table
        goes through the same `rescale` / `normalize` calls, so the result is bit-identical."""
        table = np.broadcast_to(np.arange(256, dtype=np.float32), (channels, 1, 256)).copy()
        if do_rescale:
            table = self.rescale(table, rescale_factor)
        if do_normalize:
            table = self.normalize(table.astype(np.float32), image_mean, image_std)
        return table.astype(np.float32).reshape(channels, 256)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_reduce_labels: bool,
        do_resize: bool,
        size: SizeDict,
        resample,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        **kwargs,
    ) -> list[np.ndarray]:
        processed = []
        for image in images:
            if do_reduce_labels:
                image = self.reduce_label(image)
            if do_resize:
                image = self.resize(image, size, resample)
            if (do_rescale or do_normalize) and image.dtype == np.uint8 and image.ndim == 3:
                table = self._rescale_normalize_table(image.shape[0], do_rescale, rescale_factor, do_normalize,
                                                      image_mean, image_std)  # fmt: skip
                converted = np.empty(image.shape, dtype=np.float32)
                for channel in range(image.shape[0]):
                    np.take(table[channel], image[channel], out=converted[channel])
                image = converted
            else:
                if do_rescale:
                    image = self.rescale(image.astype(np.float32), rescale_factor)
                if do_normalize:
                    image = self.normalize(image.astype(np.float32), image_mean, image_std)
            processed.append(image.astype(np.float32, copy=False) if (do_rescale or do_normalize) else image)
        return processed

    def post_process_semantic_segmentation(
        self, outputs, target_sizes=None, return_segmentation_scores: bool = False
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """Argmax class maps, a list of B (H, W) int64 tensors. A one-channel (`num_labels=1`, binary) model predicts
        class 1 where its logit is positive (sigmoid > 0.5), as its sigmoid / binary cross-entropy loss means.

        Args:
            outputs: model outputs with `logits` (B, num_labels, h, w).
            target_sizes: optional list of B `(H, W)` sizes; the logits are resized bilinearly to each before argmax.
            return_segmentation_scores: as in transformers: return a list of `SemanticSegmentationPostProcessorOutput`
                with `segmentation` (H, W) and `segmentation_scores` (num_labels, H, W), the (resized) logits.
        """
        results = []
        for scores in resized_class_scores(outputs.logits, target_sizes):
            segmentation = semantic_map(scores)
            results.append(
                SemanticSegmentationPostProcessorOutput(
                    data={"segmentation": segmentation, "segmentation_scores": scores}
                )
                if return_segmentation_scores
                else segmentation
            )
        return results

    def post_process_panoptic_segmentation(
        self,
        outputs,
        threshold: float = 0.0,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes=None,
    ) -> list[dict]:
        """Panoptic-format output of a per-pixel model, derived from its semantic prediction.

        A per-pixel model predicts one class per pixel and no instances, so every class present in the argmax map
        becomes one segment (as the "stuff" classes of a panoptic model do). A segment's `score` is the mean softmax
        probability of its class over its pixels. Every pixel belongs to a segment, so no segment is dropped:
        `threshold`, `mask_threshold` and `overlap_mask_area_threshold` only exist for compatibility with the
        mask-classification models (and `pipeline("image-segmentation")`) and are ignored. `was_fused` is true for
        classes listed in `label_ids_to_fuse`.

        Returns:
            A list of B dicts: `segmentation` (H, W) int32 tensor of segment ids (1, 2, ...) and `segments_info`, a
            list of `{"id", "label_id", "was_fused", "score"}`.
        """
        fuse = set(label_ids_to_fuse or ())
        results = []
        for scores in resized_class_scores(outputs.logits, target_sizes):
            results.append(panoptic_from_class_scores(scores, fuse))
        return results


def check_target_sizes(sizes) -> None:
    """Raises a `ValueError` unless every target size is a (height, width) pair of positive integers."""
    for index, size in enumerate(sizes):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"target_sizes[{index}] = {tuple(size)}: expected a (height, width) of at least 1 x 1.")


def _linear_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: half-pixel centres, borders clamped, weights in 11-bit fixed
    point (`INTER_RESIZE_COEF_BITS`), computed in float32 as `cv::resize` does."""
    scale = source / target
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(position).astype(np.int64)
    fraction = position - first
    low, high = first < 0, first >= source - 1
    fraction[low | high] = 0
    first[low] = 0
    first[high] = source - 1
    weight_second = np.round(fraction * 2048).astype(np.int32)
    weight_first = np.round((np.float32(1) - fraction) * 2048).astype(np.int32)
    return first, np.minimum(first + 1, source - 1), weight_first, weight_second


def opencv_bilinear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)` for a (C, H, W) array, without OpenCV.

    This is the resize of mmsegmentation's test pipeline (`mmcv.imresize` / `imrescale`, backend cv2): bilinear
    interpolation between the two nearest pixels, no antialiasing filter when shrinking (PIL's bilinear filter
    widens its support with the scale). uint8 images follow OpenCV's fixed-point arithmetic (11-bit weights, the
    horizontal sums kept as integers, the vertical pass rounding as its SIMD path does), which reproduces
    cv2.resize exactly when shrinking and within 1 grey level on a few pixels in 10^4 when enlarging
    (`benchmarks/resize_vs_original.py`); other dtypes are interpolated in float32 with the same taps.
    """
    height, width = image.shape[-2:]
    new_height, new_width = int(size[0]), int(size[1])
    if (new_height, new_width) == (height, width):
        return image.copy()
    cols0, cols1, col_w0, col_w1 = _linear_taps(width, new_width)
    rows0, rows1, row_w0, row_w1 = _linear_taps(height, new_height)
    if image.dtype == np.uint8:
        source = image.astype(np.int32)
        horizontal = source[:, :, cols0] * col_w0 + source[:, :, cols1] * col_w1  # (C, H, W') at scale 2^11
        top, bottom = horizontal[:, rows0] >> 4, horizontal[:, rows1] >> 4
        mixed = ((row_w0[:, None] * top) >> 16) + ((row_w1[:, None] * bottom) >> 16)
        return np.clip((mixed + 2) >> 2, 0, 255).astype(np.uint8)
    source = image.astype(np.float32)
    col_w0, col_w1 = col_w0.astype(np.float32) / 2048, col_w1.astype(np.float32) / 2048
    row_w0, row_w1 = row_w0.astype(np.float32)[:, None] / 2048, row_w1.astype(np.float32)[:, None] / 2048
    horizontal = source[:, :, cols0] * col_w0 + source[:, :, cols1] * col_w1
    return (horizontal[:, rows0] * row_w0 + horizontal[:, rows1] * row_w1).astype(image.dtype, copy=False)


def resized_class_scores(logits: torch.Tensor, target_sizes=None) -> list[torch.Tensor]:
    """Splits `logits` (B, C, h, w) into B (C, H, W) tensors, resized bilinearly (`align_corners=False`) to
    `target_sizes` when given; images sharing a size are resized in one call."""
    if target_sizes is None:
        return list(logits)
    if isinstance(target_sizes, torch.Tensor):
        target_sizes = target_sizes.tolist()
    if len(target_sizes) != len(logits):
        raise ValueError(
            f"Got {len(target_sizes)} target sizes for a batch of {len(logits)}; pass one (height, width) per image."
        )
    sizes = [tuple(int(v) for v in size) for size in target_sizes]
    check_target_sizes(sizes)
    if len(set(sizes)) == 1:
        if sizes[0] == tuple(logits.shape[-2:]):
            return list(logits)  # bilinear resizing to the same size is the identity
        return list(F.interpolate(logits, size=sizes[0], mode="bilinear", align_corners=False))
    return [
        item if size == tuple(item.shape[-2:]) else
        F.interpolate(item[None], size=size, mode="bilinear", align_corners=False)[0]
        for item, size in zip(logits, sizes)
    ]  # fmt: skip


def semantic_map(scores: torch.Tensor) -> torch.Tensor:
    """The (H, W) int64 class map of (C, H, W) class scores: their argmax (`class_argmax`), or for a one-channel
    (`num_labels=1`, binary) model class 1 where the logit is positive (sigmoid > 0.5)."""
    return (scores[0] > 0).long() if scores.shape[0] == 1 else class_argmax(scores)


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(dim=0)` of (C, ...) class scores: the same int64 map (the first maximum wins ties), computed on
    the CPU from the maximum over classes (a fast contiguous reduction) and one comparison per class, from the last
    class to the first, instead of PyTorch's strided argmax over the leading dimension (several times slower for
    hundreds of classes at full image size: `benchmarks/bench_pipeline.py`)."""
    if scores.device.type != "cpu" or scores.shape[0] < 2 or not scores.is_contiguous():
        return scores.argmax(dim=0)
    best = scores.amax(dim=0)
    if torch.isnan(best).any():  # NaN counts as the maximum for argmax; let PyTorch find the first one
        return scores.argmax(dim=0)
    classes = torch.zeros(scores.shape[1:], dtype=torch.long)
    for index in range(scores.shape[0] - 1, 0, -1):
        classes.masked_fill_(scores[index] == best, index)
    return classes.masked_fill_(scores[0] == best, 0)


def panoptic_from_class_scores(scores: torch.Tensor, label_ids_to_fuse: set[int]) -> dict:
    """One segment per class present in the argmax of `scores` (C, H, W), vectorised over classes."""
    probabilities = scores.float().softmax(dim=0)
    confidence, classes = probabilities.max(dim=0)
    num_classes = scores.shape[0]
    flat = classes.flatten()
    counts = torch.bincount(flat, minlength=num_classes)
    score_sums = torch.zeros(num_classes, dtype=confidence.dtype, device=confidence.device)
    score_sums.index_add_(0, flat, confidence.flatten())
    present = torch.nonzero(counts).flatten()
    segment_ids = torch.zeros(num_classes, dtype=torch.int32, device=scores.device)
    segment_ids[present] = torch.arange(1, len(present) + 1, dtype=torch.int32, device=scores.device)
    mean_scores = (score_sums[present] / counts[present]).tolist()
    segments_info = [
        {"id": index + 1, "label_id": label, "was_fused": label in label_ids_to_fuse, "score": round(score, 6)}
        for index, (label, score) in enumerate(zip(present.tolist(), mean_scores))
    ]
    return {"segmentation": segment_ids[classes], "segments_info": segments_info}
