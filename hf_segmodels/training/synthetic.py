"""A small synthetic segmentation dataset (textured shapes on textured backgrounds, 4 classes) for the quickstart,
smoke tests and CPU convergence checks; no download needed."""

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from PIL import ImageDraw

CLASSES = ["background", "disc", "square", "triangle"]
PALETTE = np.array([[40, 40, 40], [230, 80, 60], [70, 200, 90], [70, 120, 230]], dtype=np.uint8)
SIZE = 64


def _texture(rng: np.random.Generator, kind: str, base: np.ndarray, size: int) -> np.ndarray:
    """A (size, size, 3) float texture: noise around `base`, with stripes or checks depending on `kind`."""
    y, x = np.mgrid[:size, :size]
    pattern = {
        "noise": np.zeros((size, size)),
        "stripes": 30.0 * np.sign(np.sin((x + y) / 2.0)),
        "checks": 30.0 * np.sign(np.sin(x / 2.5) * np.sin(y / 2.5)),
        "rings": 30.0 * np.sign(np.sin(np.hypot(x - size / 2, y - size / 2) / 2.0)),
    }[kind]
    return base[None, None, :] + pattern[..., None] + rng.normal(0, 12, (size, size, 3))


def make_example(rng: np.random.Generator, size: int = SIZE) -> tuple[PILImage.Image, PILImage.Image]:
    """One (size x size) RGB image with 1-3 shapes and its label map (mode "L", class ids 0-3). Each class has its own
    colour family and texture, the background a random colour. Shape positions and radii are drawn for a 64-pixel
    canvas and scaled to `size`, so `size=64` is the quickstart's dataset."""
    scale = size / SIZE
    background = rng.uniform(60, 200, 3)
    image = _texture(rng, "noise", background, size)
    label = PILImage.new("L", (size, size), 0)
    draw = ImageDraw.Draw(label)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 4))
        cx, cy, r = (int(round(int(v) * scale)) for v in (rng.integers(12, 52), rng.integers(12, 52), rng.integers(7, 14)))
        if cls == 1:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
        elif cls == 2:
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=2)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=3)
    mask = np.array(label)
    for cls, kind in ((1, "rings"), (2, "stripes"), (3, "checks")):
        colour = PALETTE[cls].astype(float) * 0.7 + rng.uniform(-25, 25, 3)
        image[mask == cls] = _texture(rng, kind, colour, size)[mask == cls]
    return PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)), label


def make_dataset(num_train: int = 600, num_validation: int = 100, seed: int = 0, size: int = SIZE) -> DatasetDict:
    """The synthetic dataset as a `DatasetDict` (train / validation) with PIL `image` and `annotation` columns."""
    rng = np.random.default_rng(seed)
    features = Features({"image": Image(), "annotation": Image()})
    splits = {}
    for split, count in (("train", num_train), ("validation", num_validation)):
        images, annotations = zip(*(make_example(rng, size) for _ in range(count)))
        splits[split] = Dataset.from_dict({"image": list(images), "annotation": list(annotations)}, features=features)
    return DatasetDict(splits)


def id2label() -> dict[int, str]:
    return dict(enumerate(CLASSES))
