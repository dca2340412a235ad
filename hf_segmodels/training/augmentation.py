"""Training-time augmentation of the papers' (mmsegmentation) pipelines, in NumPy / PIL (no torchvision):

    RandomResize(ratio 0.5-2.0 of the base scale, keep ratio) -> RandomCrop(crop, cat_max_ratio 0.75) ->
    RandomFlip(0.5) -> PhotoMetricDistortion -> Normalize -> Pad(crop; image 0, label 255)

Every random decision is drawn from the `numpy.random.Generator` passed in, so that a sample's augmentation is a
function of (seed, epoch, index) only: the same whatever the number of processes or DataLoader workers, and the same
again after resuming from a checkpoint.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image


def _resize(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 image or an (H, W) label map to `size` = (height, width) with PIL."""
    height, width = size
    if array.ndim == 2:
        # PIL has no int64 images; class ids fit in int32.
        return np.asarray(PIL.Image.fromarray(array.astype(np.int32)).resize((width, height), resample)).astype(
            array.dtype
        )
    return np.asarray(PIL.Image.fromarray(array).resize((width, height), resample))


def rescale_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(scale) and short side <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def random_resize(image, label, scale: tuple[int, int], ratio_range: tuple[float, float], rng: np.random.Generator):
    """Rescales (keeping the aspect ratio) to `scale` (long, short) times a ratio drawn uniformly in `ratio_range`;
    bilinear for the image, nearest for the label."""
    ratio = rng.uniform(*ratio_range)
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    size = rescale_size(*image.shape[:2], target)
    return _resize(image, size, PIL.Image.BILINEAR), _resize(label, size, PIL.Image.NEAREST)


def random_crop(image, label, crop_size: tuple[int, int], cat_max_ratio: float, ignore_index: int, rng):
    """A random `crop_size` window (clipped to the image). With `cat_max_ratio < 1`, up to 10 draws are retried so that
    the crop holds more than one class and no single class covers `cat_max_ratio` or more of its labelled pixels (as
    mmsegmentation's `RandomCrop`); the tenth draw is kept otherwise."""

    def draw():
        margin_h, margin_w = max(image.shape[0] - crop_size[0], 0), max(image.shape[1] - crop_size[1], 0)
        top, left = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
        return top, left, top + crop_size[0], left + crop_size[1]

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            top, left, bottom, right = box
            classes, counts = np.unique(label[top:bottom, left:right], return_counts=True)
            counts = counts[classes != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    top, left, bottom, right = box
    return image[top:bottom, left:right], label[top:bottom, left:right]


def random_flip(image, label, prob: float, rng):
    if rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float RGB in [0, 255] -> HSV with hue in degrees [0, 360), saturation in [0, 1], value in [0, 255]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    delta = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, delta / np.maximum(value, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    hue = np.where(value == r, (g - b) / safe, np.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(delta > 0, (hue * 60.0) % 360.0, 0.0)
    return np.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    hue, saturation, value = hsv[..., 0] / 60.0, hsv[..., 1], hsv[..., 2]
    sector = np.floor(hue).astype(np.int64) % 6
    fraction = hue - np.floor(hue)
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    channels = [np.choose(sector, [c[i] for c in choices]) for i in range(3)]
    return np.stack(channels, axis=-1)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(array, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmsegmentation's `PhotoMetricDistortion` on an (H, W, 3) uint8 RGB image: each step applied with probability
    1/2 and the result clipped to uint8, in the order brightness, contrast (randomly first or last), saturation, hue.
    Hue shifts are in OpenCV's 8-bit units (180 per turn, i.e. 2 degrees each)."""

    def contrast(img):
        if rng.integers(2):
            return _to_uint8(img.astype(np.float32) * rng.uniform(*contrast_range))
        return img

    if rng.integers(2):
        image = _to_uint8(image.astype(np.float32) + rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        image = contrast(image)
    if rng.integers(2):
        hsv = _rgb_to_hsv(image.astype(np.float64))
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0.0, 1.0)
        image = _to_uint8(np.rint(_hsv_to_rgb(hsv)))
    if rng.integers(2):
        hsv = _rgb_to_hsv(image.astype(np.float64))
        hsv[..., 0] = (hsv[..., 0] + 2.0 * rng.integers(-hue_delta, hue_delta + 1)) % 360.0
        image = _to_uint8(np.rint(_hsv_to_rgb(hsv)))
    if not contrast_first:
        image = contrast(image)
    return image


@dataclass
class TrainAugmentation:
    """The training pipeline of the papers (mmsegmentation), from a decoded sample to model inputs.

    Args:
        crop_size: (height, width) of the training crop; smaller images are padded to it (image 0 after
            normalisation, label `ignore_index`).
        scale: (long, short) base scale of the random resize (mmseg's `img_scale`, e.g. (2048, 512) for ADE20K).
        ratio_range: range of the random resize ratio.
        cat_max_ratio: maximum share of one class in a crop (retried up to 10 times).
        flip_prob: probability of a horizontal flip.
        photometric: whether to apply `photometric_distortion`.
        image_mean, image_std: normalisation of the model's image processor (on [0, 1] pixels).
    """

    crop_size: tuple[int, int]
    scale: tuple[int, int]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        """image (H, W, 3) uint8 RGB, label (H, W) int64 class ids -> pixel_values (3, h, w) float32 and labels
        (h, w) int64 with (h, w) = `crop_size`."""
        image, label = random_resize(image, label, self.scale, self.ratio_range, rng)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio, self.ignore_index, rng)
        image, label = random_flip(image, label, self.flip_prob, rng)
        if self.photometric:
            image = photometric_distortion(np.ascontiguousarray(image), rng)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        pixels = (image.astype(np.float32) / 255.0 - mean) / std
        height, width = self.crop_size
        pixel_values = np.zeros((height, width, 3), dtype=np.float32)
        labels = np.full((height, width), self.ignore_index, dtype=np.int64)
        pixel_values[: pixels.shape[0], : pixels.shape[1]] = pixels
        labels[: label.shape[0], : label.shape[1]] = label
        return np.ascontiguousarray(pixel_values.transpose(2, 0, 1)), labels
